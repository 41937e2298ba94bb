"""The whole pipeline against the deterministic stub generator (tests/support/stub_generator.py).

- a full run writes every step file, the manifest, and train/test pairs that `datasets` loads;
- killed with SIGKILL at several points and restarted, a run ends with exactly the records
  of an uninterrupted run (per-step JSONL sorted by id);
- 500s for a while are retried and counted; a request that keeps failing marks its record
  failed and the run goes on; the next start retries it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cai.pipeline import PipelineConfig, RunConfigMismatch, run_pipeline
from cai.pipeline.prompts import load_template
from cai.pipeline.records import STEPS
from cai.pipeline.seeds import load_seed_pool
from tests.support.stub_generator import StubServer

CAI = str(Path(sys.executable).parent / "cai")
FILES = (*STEPS, "train", "test")


def _config(url: str, **overrides) -> PipelineConfig:
    data = {
        "name": "stub",
        "seed": 99,
        "model": "tiny",
        "endpoints": [{"url": url, "concurrency": 8}],
        "instructions": {"counts": {"qa": 6, "completion": 6, "generation": 6, "response": 6}},
        "critiques": {"rounds": 2},
        "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
    }
    data.update(overrides)
    return PipelineConfig.model_validate(data)


def _records(run_dir: Path) -> dict[str, list[str]]:
    return {name: sorted((run_dir / f"{name}.jsonl").read_text().splitlines()) for name in FILES}


@pytest.fixture
def stub():
    with StubServer(models=["tiny"], duplicate_rate=0.15) as server:
        yield server


async def test_full_run_writes_every_step_file_and_the_manifest(stub, tmp_path):
    summary = await run_pipeline(_config(stub.base_url), tmp_path / "run")
    run = tmp_path / "run"
    for name in FILES:
        assert (run / f"{name}.jsonl").exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["tokens"]["responses"]["completion_tokens"] > 0
    assert manifest["templates"]["responses"]["tag"] == load_template("responses").tag
    assert manifest["served_models"][0]["id"] == "tiny"
    assert manifest["cost_usd"] >= 0 and manifest["wall_s"] > 0
    assert summary.counts["instructions"]["ok"] == 24
    assert summary.skip_reasons.get("instructions:duplicate", 0) > 0  # the stub repeats itself
    # Every response gets its two critique rounds' worth of records; an unusable critique
    # (restating the request, copying the response) is written as rejected with its reason.
    critique_counts = summary.counts["critiques"]
    assert (
        critique_counts["ok"] + critique_counts.get("rejected", 0)
        >= summary.counts["revisions"]["ok"]
    )
    assert sum(critique_counts.values()) <= 2 * summary.counts["responses"]["ok"]
    assert critique_counts["ok"] > 0
    assert summary.train_rows + summary.test_rows == summary.counts["pairs"].get("ok", 0) > 0
    critiques = [json.loads(line) for line in (run / "critiques.jsonl").read_text().splitlines()]
    assert len({c["principle_id"] for c in critiques}) > 3


async def test_every_pair_text_was_written_by_the_model(stub, tmp_path):
    run = tmp_path / "run"
    await run_pipeline(_config(stub.base_url), run)
    by_id = {}
    for step in ("responses", "revisions"):
        for line in (run / f"{step}.jsonl").read_text().splitlines():
            record = json.loads(line)
            by_id[record["id"]] = record
    pool = load_seed_pool()
    canned = {e.response for t in pool.types.values() for e in t.examples}
    canned |= {e.revision for e in pool.critique_examples}
    rows = [
        json.loads(line)
        for name in ("train", "test")
        for line in (run / f"{name}.jsonl").read_text().splitlines()
    ]
    assert rows
    for row in rows:
        chosen, rejected = by_id[row["chosen_id"]], by_id[row["rejected_id"]]
        assert row["chosen"] == chosen["text"] and row["rejected"] == rejected["text"]
        for record in (chosen, rejected):
            assert record["model"] == "tiny" and record["usage"]["completion_tokens"] > 0
            assert record["instruction_id"] == row["instruction_id"]
            assert record["text"] not in canned


async def test_pairs_load_with_datasets(stub, tmp_path):
    datasets = pytest.importorskip("datasets")
    summary = await run_pipeline(_config(stub.base_url), tmp_path / "run")
    loaded = datasets.load_dataset(
        "json", data_files={"train": summary.train_path, "test": summary.test_path}
    )
    assert loaded["train"].num_rows == summary.train_rows
    assert {"prompt", "chosen", "rejected", "instruction_id"} <= set(loaded["train"].column_names)
    train_ids = set(loaded["train"]["instruction_id"])
    assert not train_ids & set(loaded["test"]["instruction_id"])


async def test_the_same_seed_gives_the_same_records(stub, tmp_path):
    await run_pipeline(_config(stub.base_url), tmp_path / "a")
    await run_pipeline(
        _config(stub.base_url, endpoints=[{"url": stub.base_url, "concurrency": 1}]), tmp_path / "b"
    )
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


async def test_a_changed_config_is_refused_on_resume(stub, tmp_path):
    await run_pipeline(_config(stub.base_url), tmp_path / "run")
    with pytest.raises(RunConfigMismatch, match="different config"):
        await run_pipeline(_config(stub.base_url, seed=100), tmp_path / "run")


def _write_config(path: Path, config: PipelineConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _generate(config_file: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CAI, "generate", str(config_file), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_resume_after_sigkill_at_several_points_gives_the_same_records(tmp_path):
    # A slow stub (5 ms a request, 4 in flight) so the kills land mid-run.
    with StubServer(models=["tiny"], duplicate_rate=0.15, delay="const:0.005") as stub:
        config = _config(stub.base_url, endpoints=[{"url": stub.base_url, "concurrency": 4}])
        config_file = _write_config(tmp_path / "config.yaml", config)
        reference = tmp_path / "reference"
        done = subprocess.run(
            [CAI, "generate", str(config_file), "--run-dir", str(reference), "--no-progress"],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]

        run = tmp_path / "killed"
        kill_points = [
            ("instructions", 5),
            ("responses", 6),
            ("critiques", 15),
            ("judgements", 10),
            ("pairs", 16),
        ]
        kills = 0
        for step, lines in kill_points:
            process = _generate(config_file, run)
            deadline = time.monotonic() + 60
            while _count_lines(run / f"{step}.jsonl") < lines and process.poll() is None:
                assert time.monotonic() < deadline, f"{step} never reached {lines} lines"
                time.sleep(0.002)
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
            process.wait()
        assert kills >= 3
        final = subprocess.run(
            [CAI, "generate", str(config_file), "--run-dir", str(run), "--no-progress"],
            capture_output=True,
            check=False,
        )
        assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert _records(run) == _records(reference)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert len(manifest["sessions"]) == kills + 1


async def test_server_errors_for_a_while_are_retried_and_counted(tmp_path):
    with StubServer(models=["tiny"], fail_status=500, fail_first=15) as stub:
        summary = await run_pipeline(_config(stub.base_url), tmp_path / "run")
    assert summary.retries >= 15
    assert summary.failures == {}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["retries"] >= 15
    assert manifest["sessions"][-1]["retry_reasons"]["500"] >= 15


async def test_rate_limits_are_retried(tmp_path):
    with StubServer(models=["tiny"], fail_status=429, fail_first=5) as stub:
        summary = await run_pipeline(_config(stub.base_url), tmp_path / "run")
    assert summary.retries >= 5 and summary.failures == {}


async def test_a_record_that_keeps_failing_is_marked_failed_and_the_run_goes_on(tmp_path):
    source = tmp_path / "instructions.jsonl"
    source.write_text(
        "\n".join(
            json.dumps({"type": "qa", "text": f"Question number {i}: why is {w} the way it is?"})
            for i, w in enumerate(["sand", "snow", "rain", "fog"])
        )
        + "\n"
    )
    config = _config(
        "http://unused",
        instructions={"source": "file", "file": str(source)},
        retry={"max_attempts": 2, "initial_backoff_s": 0.0, "max_backoff_s": 0.0},
    )
    with StubServer(models=["tiny"], fail_status=500, fail_for_s=3600) as stub:
        config = config.model_copy(update={"endpoints": _config(stub.base_url).endpoints})
        summary = await run_pipeline(config, tmp_path / "run")
    # Every record was written and the run reached its end, but with all 4 answers failed
    # (past retry.max_failed_share) it is `failed`, never `complete`.
    assert summary.status == "failed"
    assert summary.status_reason and "max_failed_share" in summary.status_reason
    assert summary.counts["responses"] == {"failed": 4}
    failed = json.loads((tmp_path / "run" / "responses.jsonl").read_text().splitlines()[0])
    assert failed["status"] == "failed" and "500" in failed["reason"]

    with StubServer(
        models=["tiny"]
    ) as stub:  # the server is healthy again: failed ones are retried
        config = config.model_copy(update={"endpoints": _config(stub.base_url).endpoints})
        summary = await run_pipeline(config, tmp_path / "run")
    assert summary.counts["responses"] == {"ok": 4}
    assert summary.failures == {}
    assert summary.status == "complete"
