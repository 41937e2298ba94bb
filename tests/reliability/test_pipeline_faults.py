"""`cai generate` under faults, black-box: the command in its own process against the
deterministic stub generator (tests/support/stub_generator.py), compared with one
uninterrupted run of the same config (per-step JSONL, lines sorted: records are the same
whatever order they were written in).

- SIGKILLed at 20 random (seeded) moments in a row, restarted each time: the same records;
  some kills also leave a torn last line (a prefix of a record, as a write cut short would),
  which the next start cuts off, counts in the manifest and never reads as a record;
- the generator stopped for 30 s mid-run and started again: nothing lost;
- a generator answering 500 or 429 for a while: retried, counted in the manifest.

    .venv/bin/pytest tests/reliability/test_pipeline_faults.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cai.pipeline import PipelineConfig
from cai.pipeline.records import STEPS
from cai.runfolder import ACCOUNTING_FILE as ACCOUNTING
from tests.support.stub_generator import StubServer

CAI = str(Path(sys.executable).parent / "cai")
FILES = (*STEPS, "train", "test")
KILLS = 20


def write_config(path: Path, url: str, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "name": "faults",
        "seed": 11,
        "model": "tiny",
        "endpoints": [{"url": url, "concurrency": 2}],
        "instructions": {"counts": {"qa": 8, "completion": 8, "generation": 8, "response": 8}},
        "critiques": {"rounds": 2},
        # Outages up to max_total_s are waited out; the cap keeps the wait short once the
        # generator is back.
        "retry": {
            "max_attempts": 1000,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 1.0,
            "max_total_s": 120.0,
        },
    } | overrides
    config = PipelineConfig.model_validate(data)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def generate(config: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CAI, "generate", str(config), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def generate_to_end(config: Path, run_dir: Path, timeout_s: float = 300) -> None:
    done = subprocess.run(
        [CAI, "generate", str(config), "--run-dir", str(run_dir), "--no-progress"],
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def records(run_dir: Path) -> dict[str, list[bytes]]:
    """Per step (and the train/test split), the file's lines, sorted."""
    return {name: sorted((run_dir / f"{name}.jsonl").read_bytes().splitlines()) for name in FILES}


def written_bytes(run_dir: Path) -> int:
    """Bytes of the record files (not accounting.jsonl: its heartbeat runs while waiting)."""
    if not run_dir.exists():
        return 0
    return sum(p.stat().st_size for p in run_dir.glob("*.jsonl") if p.name != ACCOUNTING)


def manifest(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return loaded


def torn_tails(run_dir: Path) -> dict[str, int]:
    """Per step, the bytes after the file's last newline: what the next session must cut."""
    tails = {}
    for step in STEPS:
        path = run_dir / f"{step}.jsonl"
        data = path.read_bytes() if path.exists() else b""
        if tail := len(data) - (data.rfind(b"\n") + 1):
            tails[step] = tail
    return tails


def kill_mid_session(config: Path, run: Path, delay_s: float, which: str) -> None:
    """Start a session of `run`, SIGKILL it `delay_s` after it has written something new."""
    before = written_bytes(run)
    process = generate(config, run)
    deadline = time.monotonic() + 60
    while written_bytes(run) <= before and process.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress in 60 s"
        time.sleep(0.005)  # polling the files for progress
    time.sleep(delay_s)
    assert process.poll() is None, f"the run finished before {which}: make the config larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def tear_last_line(run_dir: Path, rng: random.Random) -> tuple[str, int]:
    """Leave what a write cut short would: the start of a record line, with no newline."""
    candidates = [
        step for step in STEPS if (run_dir / f"{step}.jsonl").read_bytes().endswith(b"\n")
    ]
    step = rng.choice(candidates)
    path = run_dir / f"{step}.jsonl"
    last = path.read_bytes().splitlines()[-1]
    torn = last[: rng.randint(1, len(last) - 1)]
    with path.open("ab") as handle:
        handle.write(torn)
    return step, len(torn)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    # 20 ms a request and two in flight: a run lasts long enough for 20 kills to land in it.
    with StubServer(models=["tiny"], duplicate_rate=0.15, delay="const:0.02") as server:
        yield server


@pytest.mark.slow
def test_20_sigkills_in_a_row_end_with_the_records_of_an_uninterrupted_run(
    stub: StubServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", stub.base_url)
    reference = tmp_path / "reference"
    generate_to_end(config, reference)

    rng = random.Random(20260)
    run = tmp_path / "killed"
    # Per session, the torn tails it finds on open. The kernel may cut a write that spans a
    # page boundary when SIGKILL lands mid-write (the docstring of cai.pipeline.store), so a
    # real kill can tear a line too; every fourth kill adds one by hand on top.
    found_on_open: list[dict[str, int]] = [{}]
    injected: dict[int, tuple[str, int]] = {}  # session number -> the tail the test wrote
    for kill in range(KILLS):
        kill_mid_session(config, run, rng.uniform(0.0, 0.25), f"kill {kill + 1} of {KILLS}")
        if kill % 5 == 4:
            injected[kill + 1] = tear_last_line(run, rng)
        found_on_open.append(torn_tails(run))
    generate_to_end(config, run)

    assert records(run) == records(reference)
    final = manifest(run)
    assert final["status"] == "complete"
    sessions = final["sessions"]
    assert len(sessions) == KILLS + 1
    assert [s["completed"] for s in sessions] == [False] * KILLS + [True]
    for session, (step, size) in injected.items():
        assert found_on_open[session][step] == size
    assert [s["repaired_torn_bytes"] for s in sessions] == found_on_open


def test_a_torn_or_invalid_last_line_is_cut_off_and_never_read_as_a_record(
    stub: StubServer, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        stub.base_url,
        instructions={"counts": {"qa": 3, "completion": 3, "generation": 3, "response": 3}},
        critiques={"rounds": 1},
    )
    run = tmp_path / "run"
    generate_to_end(config, run)
    expected = records(run)
    responses = run / "responses.jsonl"
    first = responses.read_bytes().splitlines()[0]
    record = json.loads(first)
    # A whole-looking line that is not a valid record (a write cut short at a brace), and,
    # in another file, a prefix of a real record that happens to look like its start.
    invalid = json.dumps({"id": record["id"] + "-x", "status": "ok"}).encode() + b"\n"
    with responses.open("ab") as handle:
        handle.write(invalid)
    critiques = run / "critiques.jsonl"
    prefix = critiques.read_bytes().splitlines()[-1][:40]
    with critiques.open("ab") as handle:
        handle.write(prefix)

    generate_to_end(config, run)

    assert records(run) == expected
    repaired = manifest(run)["sessions"][-1]["repaired_torn_bytes"]
    assert repaired == {"responses": len(invalid), "critiques": len(prefix)}
    assert responses.read_bytes().endswith(b"\n") and critiques.read_bytes().endswith(b"\n")


def test_an_invalid_line_before_the_last_stops_the_run_and_names_it(
    stub: StubServer, tmp_path: Path
) -> None:
    """Not a torn tail but damage inside the file: refused with the line, never skipped."""
    config = write_config(
        tmp_path / "config.yaml",
        stub.base_url,
        instructions={"counts": {"qa": 2, "completion": 2, "generation": 2, "response": 2}},
        critiques={"rounds": 1},
    )
    run = tmp_path / "run"
    generate_to_end(config, run)
    responses = run / "responses.jsonl"
    lines = responses.read_bytes().splitlines(keepends=True)
    responses.write_bytes(lines[0] + b'{"broken": \n' + b"".join(lines[1:]))
    before = responses.read_bytes()
    done = subprocess.run(
        [CAI, "generate", str(config), "--run-dir", str(run), "--no-progress"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    message = done.stderr.decode().replace("\n", "")  # rich wraps it at the terminal width
    assert "responses.jsonl:2 is not a valid" in message and "fix or delete that line" in message
    assert responses.read_bytes() == before  # nothing cut or rewritten


@pytest.mark.slow
def test_a_generator_down_for_30_s_mid_run_loses_nothing(stub: StubServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", stub.base_url)
    reference = tmp_path / "reference"
    generate_to_end(config, reference)

    run = tmp_path / "outage"
    process = generate(config, run)
    deadline = time.monotonic() + 60
    while not (run / "responses.jsonl").exists() or (run / "responses.jsonl").stat().st_size == 0:
        assert process.poll() is None and time.monotonic() < deadline, "no response written"
        time.sleep(0.01)  # polling the run for progress
    stub.stop()
    stopped_at = written_bytes(run)
    time.sleep(30)  # the outage itself, not a wait for readiness
    assert process.poll() is None, "the run gave up while the generator was down"
    assert written_bytes(run) == stopped_at  # nothing was made up meanwhile
    stub.start()  # same port
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-3000:]

    assert records(run) == records(reference)
    final = manifest(run)
    assert final["status"] == "complete"
    assert final["failed_requests"] == 0 and final["failures"] == {}
    reasons = final["sessions"][-1]["retry_reasons"]
    assert final["retries"] >= 10 and any(r.startswith("Generator") for r in reasons), reasons


@pytest.mark.parametrize(
    ("status", "options"), [(500, {"fail_first": 40}), (429, {"fail_for_s": 3})]
)
def test_500_or_429_for_a_while_is_retried_and_counted_in_the_manifest(
    tmp_path: Path, status: int, options: dict[str, Any]
) -> None:
    small = {"instructions": {"counts": {"qa": 3, "completion": 3, "generation": 3, "response": 3}}}
    with StubServer(models=["tiny"], duplicate_rate=0.15) as healthy:
        config = write_config(tmp_path / "reference.yaml", healthy.base_url, **small)
        reference = tmp_path / "reference"
        generate_to_end(config, reference)
    with StubServer(models=["tiny"], duplicate_rate=0.15, fail_status=status, **options) as stub:
        config = write_config(tmp_path / "config.yaml", stub.base_url, **small)
        run = tmp_path / "run"
        generate_to_end(config, run)
        failed_answers = stub.stats()
    assert records(run) == records(reference)
    final = manifest(run)
    assert final["status"] == "complete" and final["failures"] == {}
    counted = final["sessions"][-1]["retry_reasons"].get(str(status), 0)
    # Every failed answer was retried, and every retry is in the manifest.
    assert counted == failed_answers["failures"] > 0
    assert final["retries"] >= counted
    if "fail_first" in options:
        assert counted == options["fail_first"]


def step_records(run_dir: Path, step: str) -> list[dict[str, Any]]:
    path = run_dir / f"{step}.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_a_ruined_first_run_is_retried_by_the_next_not_kept_as_final(tmp_path: Path) -> None:
    """Issue 13, class 5: every completion failing after its retries (one try each; the
    first 36 are every attempt the config allows, 3 per instruction x 12) used to end
    `complete` with 0 pairs, and the next run, the generator healthy, finished at once with
    0 pairs again."""
    small = {
        "instructions": {"counts": {"qa": 3, "completion": 3, "generation": 3, "response": 3}},
        "critiques": {"rounds": 1},
        "retry": {"max_attempts": 1, "initial_backoff_s": 0.0, "max_total_s": 5.0},
    }
    with StubServer(models=["tiny"], fail_status=500, fail_first=36) as stub:
        config = write_config(tmp_path / "config.yaml", stub.base_url, **small)
        run = tmp_path / "run"
        first = subprocess.run(
            [CAI, "generate", str(config), "--run-dir", str(run), "--no-progress"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert first.returncode == 1, first.stderr.decode()[-3000:]
        assert manifest(run)["status"] == "failed"
        assert "retry.max_failed_share" in first.stderr.decode().replace("\n", "")
        failed_before = {
            r["id"] for r in step_records(run, "instructions") if r["status"] == "failed"
        }
        assert failed_before

        generate_to_end(config, run)  # the failures are spent: the stub answers now

    final = manifest(run)
    assert final["status"] == "complete" and final["failures"] == {}
    assert final["sessions"][-1]["dropped_failed"]["instructions"] == len(failed_before)
    instructions = step_records(run, "instructions")
    assert all(r["status"] != "failed" for r in instructions)
    # The failed attempts were asked again (in order, until each type had its count), not
    # left as final with new attempts after them.
    assert {r["id"] for r in instructions} <= failed_before
    assert sum(1 for r in instructions if r["status"] == "ok") == 12
    assert len(step_records(run, "pairs")) > 0


def test_sigkilled_sessions_count_their_time_and_tokens(stub: StubServer, tmp_path: Path) -> None:
    """Issue 13, class 7: each session is killed once it has written records; the final
    manifest counts at least the tokens of every record on disk, and every killed session has
    time and tokens of its own (they used to count 0 s and no tokens)."""
    config = write_config(tmp_path / "config.yaml", stub.base_url)
    run = tmp_path / "run"
    rng = random.Random(7)
    for kill in range(4):
        kill_mid_session(config, run, rng.uniform(0.05, 0.3), f"kill {kill + 1} of 4")
    generate_to_end(config, run)

    final = manifest(run)
    killed = final["sessions"][:-1]
    assert len(killed) == 4
    for session in killed:
        assert session["accounted_from_log"] and session["wall_s"] > 0
        assert sum(t["completion_tokens"] for t in session["tokens"].values()) > 0
    for step in ("instructions", "responses", "critiques", "revisions"):
        on_disk = sum(
            (r.get("usage") or {}).get("completion_tokens", 0) for r in step_records(run, step)
        )
        assert final["tokens"][step]["completion_tokens"] >= on_disk > 0, step
    assert final["wall_s"] == round(sum(s["wall_s"] for s in final["sessions"]), 3)
    assert final["cost_usd"] > 0
