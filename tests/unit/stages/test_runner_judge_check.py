"""`cai run` measures its judge once, before the baseline, and records it like every step.

.venv/bin/pytest tests/unit/stages/test_runner_judge_check.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.runfolder import JUDGE_CHECK_FILE, MANIFEST_FILE, STEPS_FILE
from cai.stages.bookkeeping import StageBookkeeping
from cai.stages.config import RunConfig
from cai.stages.runner import StageRunner
from tests.unit.evaluation.fake_judge import FakeJudge, perfect


class RecordingReporter:
    def __init__(self) -> None:
        self.steps: list[tuple[int, str, str]] = []

    def step(self, stage: int, step: str, message: str) -> None:
        self.steps.append((stage, step, message))

    def pipeline_progress(self, stage: int) -> None:
        return None

    def training(self, stage: int, event: Any) -> None:
        return None


def _runner(tmp_path: Path, fake: FakeJudge, **evaluation: Any) -> StageRunner:
    config = RunConfig.model_validate(
        {
            "name": "checked",
            "run_root": str(tmp_path),
            "generator": {"url": "http://gen:8000"},
            "evaluation": evaluation,
            "stages": [{}],
        }
    )
    # The runner calls only `complete` on the generator for the judge check.
    return StageRunner(StageBookkeeping(config, fake, object(), RecordingReporter()))


def _steps(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / STEPS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_judge_check_is_recorded_as_a_step_and_in_the_manifest(tmp_path: Path) -> None:
    judge = perfect()
    runner = _runner(tmp_path, judge)
    check = await runner.measure_judge()
    assert check is not None and check.trustworthy and check.judge_model == "tiny"
    assert (runner.run_dir / JUDGE_CHECK_FILE).exists()
    [row] = _steps(runner.run_dir)
    assert (row["stage"], row["step"]) == (0, "judge check")
    assert row["prompt_tokens"] == check.prompt_tokens > 0
    runner.book.judge_check = check
    runner.book.write_manifest({})
    manifest = json.loads((runner.run_dir / MANIFEST_FILE).read_text())
    assert manifest["judge_check"]["trustworthy"] is True
    assert "results" not in manifest["judge_check"]  # per-case margins stay in their own file


async def test_a_resumed_run_reuses_the_judge_check_without_a_new_step(tmp_path: Path) -> None:
    await _runner(tmp_path, perfect()).measure_judge()
    judge = perfect()
    runner = _runner(tmp_path, judge)
    check = await runner.measure_judge()
    assert check is not None and judge.calls == []
    assert len(_steps(runner.run_dir)) == 1
    reporter = runner.reporter
    assert isinstance(reporter, RecordingReporter)
    assert reporter.steps[-1][2].startswith("cached: ")


async def test_no_judge_check_when_the_evaluation_runs_no_judge(tmp_path: Path) -> None:
    judge = perfect()
    runner = _runner(tmp_path, judge, judge=False)
    assert await runner.measure_judge() is None
    assert judge.calls == [] and not (runner.run_dir / JUDGE_CHECK_FILE).exists()
