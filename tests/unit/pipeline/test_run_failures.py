"""A run that failed is never `complete` (issue 13, class 5).

- the generator is asked for its models before anything is written: none of its (or the
  judge's) endpoints answering stops the run at once, with nothing in the run folder;
- a run whose failed records pass `retry.max_failed_share` ends `failed`;
- the next run of the same folder asks again for what failed (the stub-server version, with
  instruction attempts, is tests/reliability/test_pipeline_faults.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.generator import GeneratorConnectionError
from cai.generator.types import ModelCard
from cai.pipeline.config import PipelineConfig
from cai.pipeline.endpoints import CallStats, Endpoint, RequestFailed
from cai.pipeline.manifest import Manifest
from cai.pipeline.runner import GeneratorUnreachable, PipelineRunner


class Lister:
    """An endpoint's client: lists `models`, or raises `error` as a server that is down."""

    def __init__(self, models: list[str] | None = None, error: Exception | None = None) -> None:
        self.cards = [ModelCard(id=m) for m in models or []]
        self.error = error
        self.asked = 0

    async def models(self) -> list[ModelCard]:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return self.cards


def down(url: str) -> Lister:
    return Lister(
        error=GeneratorConnectionError(
            f"cannot reach the generator at {url} (GET /v1/models: ConnectError); is it running?",
            url=url,
        )
    )


class FailingCaller:
    """A caller whose every request fails for good (after what would be its retries)."""

    def __init__(self, *clients: Lister) -> None:
        self.stats = CallStats()
        self.pool = type(
            "Pool",
            (),
            {
                "endpoints": [
                    Endpoint(f"http://e{i}", client, 1)
                    for i, client in enumerate(clients)  # type: ignore[arg-type]
                ]
            },
        )()
        self.requests = 0

    async def complete(self, prompts: list[str], **params: Any) -> Any:
        self.requests += 1
        self.stats.failed += 1
        raise RequestFailed("GeneratorServerError: 503 after 30 tries")


def file_config(tmp_path: Path, rows: int = 4, **overrides: Any) -> PipelineConfig:
    path = tmp_path / "instructions.jsonl"
    path.write_text(
        "".join(
            json.dumps({"type": "qa", "text": f"Question number {i}: what is {i} squared?"}) + "\n"
            for i in range(rows)
        )
    )
    return PipelineConfig.small_test(
        instructions={"source": "file", "file": str(path)}, model="tiny", **overrides
    )


async def test_a_generator_that_does_not_answer_stops_the_run_before_anything_is_written(
    tmp_path: Path,
) -> None:
    caller = FailingCaller(down("http://e0"))
    run_dir = tmp_path / "run"
    runner = PipelineRunner(file_config(tmp_path), run_dir, generator=caller)  # type: ignore[arg-type]
    with pytest.raises(GeneratorUnreachable) as info:
        await runner.run()
    message = str(info.value)
    assert "\n" not in message and "http://e0" in message and "nothing was written" in message
    assert "CAI_GENERATOR_URL" in message
    assert caller.requests == 0 and not run_dir.exists()


async def test_an_unreachable_judge_stops_the_run_too(tmp_path: Path) -> None:
    generator = FailingCaller(Lister(["tiny"]))
    judge = FailingCaller(down("http://judge"))
    run_dir = tmp_path / "run"
    runner = PipelineRunner(
        file_config(tmp_path),
        run_dir,
        generator=generator,
        judge=judge,  # type: ignore[arg-type]
    )
    with pytest.raises(GeneratorUnreachable, match=r"the judge cannot be used.*judge\.endpoints"):
        await runner.run()
    assert not run_dir.exists()


async def test_one_replica_down_while_another_answers_is_not_fatal(tmp_path: Path) -> None:
    up, gone = Lister(["tiny"]), down("http://e1")
    caller = FailingCaller(up, gone)
    config = file_config(tmp_path, retry={"max_failed_share": 1.0})
    summary = await PipelineRunner(config, tmp_path / "run", generator=caller).run()  # type: ignore[arg-type]
    assert summary.status == "complete"
    assert up.asked == gone.asked == 1
    served = Manifest.load_or_new(tmp_path / "run", "x").served_models
    assert [m["endpoint"] for m in served] == ["http://e0"]


@pytest.mark.parametrize(
    ("share", "status"), [(None, "failed"), (0.5, "complete"), (1.0, "complete"), (0.0, "failed")]
)
async def test_failures_past_max_failed_share_end_the_run_failed(
    tmp_path: Path, share: float | None, status: str
) -> None:
    # 4 instructions read from the file, 4 responses that fail: half the records failed.
    retry = {} if share is None else {"max_failed_share": share}
    config = file_config(tmp_path, retry=retry)
    caller = FailingCaller(Lister(["tiny"]))
    summary = await PipelineRunner(config, tmp_path / "run", generator=caller).run()  # type: ignore[arg-type]
    manifest = Manifest.load_or_new(tmp_path / "run", "x")
    assert summary.status == manifest.status == status
    if status == "failed":
        assert summary.status_reason is not None
        assert "4 of 8 records failed" in summary.status_reason
        assert "retry.max_failed_share" in summary.status_reason
    else:
        assert summary.status_reason is None


async def test_failed_records_are_asked_for_again_by_the_next_run(tmp_path: Path) -> None:
    config = file_config(tmp_path)
    run_dir = tmp_path / "run"
    first = FailingCaller(Lister(["tiny"]))
    await PipelineRunner(config, run_dir, generator=first).run()  # type: ignore[arg-type]
    second = FailingCaller(Lister(["tiny"]))
    await PipelineRunner(config, run_dir, generator=second).run()  # type: ignore[arg-type]
    assert first.requests == second.requests == 4
    sessions = Manifest.load_or_new(run_dir, "x").sessions
    assert sessions[1].dropped_failed == {"responses": 4}


@pytest.mark.parametrize("command", ["generate", "rerun"])
def test_the_cli_against_a_generator_not_listening_fails_fast_with_one_line(
    tmp_path: Path, closed_url: str, command: str
) -> None:
    run_dir = tmp_path / "run"
    args = ["generate", "--small-test", "--run-dir", str(run_dir)]
    if command == "rerun":
        # A run folder that exists (its config saved), redone against the closed port.
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("name: small-test\n")
        args = ["rerun", "pairs", "--run", str(run_dir)]
    before = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else None
    started = time.monotonic()
    result = CliRunner().invoke(app, [*args, "--endpoint", closed_url, "--no-progress"])
    elapsed = time.monotonic() - started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: the generator cannot be used")
    assert closed_url in lines[0]
    # Refused at the first connection: no request retried for minutes. (Generous bound: a
    # refused connection answers in milliseconds.)
    assert elapsed < 20
    after = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else None
    assert after == before
