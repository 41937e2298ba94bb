"""`accounting.jsonl`: a killed session's time and tokens are counted (issue 13, class 7)."""

from __future__ import annotations

import json
from pathlib import Path

from cai.pipeline.accounting import AccountingLog, recover
from cai.pipeline.manifest import Manifest, Session, StepTokens
from cai.runfolder import ACCOUNTING_FILE as ACCOUNTING


def manifest_with(*sessions: Session) -> Manifest:
    return Manifest(name="run", sessions=list(sessions), usd_per_gpu_hour=3.6)


def killed() -> Session:
    return Session(started_at="2026-01-01T00:00:00+00:00")  # no ended_at: never finished


def log_lines(run_dir: Path, *lines: dict[str, object]) -> None:
    with (run_dir / ACCOUNTING).open("a") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


def test_a_killed_session_gets_the_time_tokens_and_counters_of_its_lines(tmp_path: Path) -> None:
    log_lines(
        tmp_path,
        {"s": 0, "t": 0.0, "gpus": 2.0},
        {"s": 0, "t": 0.4, "step": "responses", "p": 10, "c": 5},
        {
            "s": 0,
            "t": 1.0,
            "gpus": 2.0,
            "records_written": {"responses": 1},
            "retries": 3,
            "retry_reasons": {"500": 3},
            "failed_requests": 0,
        },
        {"s": 0, "t": 1.7, "step": "responses", "p": 12, "c": 6},
        {"s": 0, "t": 1.9, "step": "critiques", "p": 30, "c": 8},
    )
    manifest = manifest_with(killed())
    recover(manifest, tmp_path)
    session = manifest.sessions[0]
    assert session.wall_s == 1.9 and session.gpu_s == 3.8
    assert session.tokens == {
        "responses": StepTokens(requests=2, prompt_tokens=22, completion_tokens=11),
        "critiques": StepTokens(requests=1, prompt_tokens=30, completion_tokens=8),
    }
    assert session.retries == 3 and session.retry_reasons == {"500": 3}
    assert session.accounted_from_log
    # The run's totals are summed again, cost included.
    assert manifest.wall_s == 1.9 and manifest.gpu_s == 3.8 and manifest.cost_usd == 0.0038
    assert manifest.tokens["responses"].prompt_tokens == 22 and manifest.retries == 3


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log_lines(tmp_path, {"s": 0, "t": 0.5, "step": "responses", "p": 10, "c": 5})
    with (tmp_path / ACCOUNTING).open("a") as handle:
        handle.write('{"s":0,"t":0.9,"step":"resp')
    manifest = manifest_with(killed())
    recover(manifest, tmp_path)
    assert manifest.sessions[0].tokens["responses"].requests == 1
    assert manifest.sessions[0].wall_s == 0.5


def test_a_session_that_ended_keeps_the_manifests_numbers(tmp_path: Path) -> None:
    ended = Session(started_at="x", ended_at="y", wall_s=9.0, gpu_s=9.0, completed=True)
    log_lines(tmp_path, {"s": 0, "t": 3.0, "step": "responses", "p": 1, "c": 1})
    manifest = manifest_with(ended)
    recover(manifest, tmp_path)
    assert manifest.sessions[0] == ended


def test_a_recovery_never_lowers_what_the_manifest_saved_later(tmp_path: Path) -> None:
    saved = killed()
    saved.wall_s, saved.gpu_s, saved.retries = 6.0, 6.0, 9
    saved.tokens = {"responses": StepTokens(requests=5, prompt_tokens=50, completion_tokens=20)}
    log_lines(
        tmp_path,
        {
            "s": 0,
            "t": 4.0,
            "gpus": 1.0,
            "records_written": {},
            "retries": 2,
            "retry_reasons": {},
            "failed_requests": 0,
        },
        {"s": 0, "t": 4.2, "step": "responses", "p": 10, "c": 4},
    )
    manifest = manifest_with(saved)
    recover(manifest, tmp_path)
    session = manifest.sessions[0]
    assert (
        session.wall_s == 6.0 and session.retries == 9 and session.tokens["responses"].requests == 5
    )


def test_recovering_twice_counts_once(tmp_path: Path) -> None:
    log_lines(tmp_path, {"s": 0, "t": 1.0, "step": "responses", "p": 10, "c": 5})
    manifest = manifest_with(killed())
    recover(manifest, tmp_path)
    recover(manifest, tmp_path)
    assert manifest.sessions[0].tokens["responses"].prompt_tokens == 10


def test_starting_a_session_drops_the_lines_of_the_ones_before(tmp_path: Path) -> None:
    log_lines(tmp_path, {"s": 0, "t": 1.0, "step": "responses", "p": 10, "c": 5})
    log = AccountingLog.start(tmp_path, session=1, gpus=1.0)
    log.tokens("critiques", prompt_tokens=7, completion_tokens=3)
    log.heartbeat(Session(started_at="x", retries=1))
    log.close()
    lines = [json.loads(line) for line in (tmp_path / ACCOUNTING).read_text().splitlines()]
    assert {line["s"] for line in lines} == {1}
    assert [line.get("step") for line in lines] == [None, "critiques", None]
    manifest = manifest_with(Session(started_at="a", ended_at="b"), killed())
    recover(manifest, tmp_path)
    assert manifest.sessions[1].tokens["critiques"].completion_tokens == 3
    assert manifest.sessions[1].retries == 1


def test_an_old_run_folder_without_a_log_or_the_new_fields_still_loads(tmp_path: Path) -> None:
    old = {
        "name": "old",
        "status": "interrupted",
        "sessions": [{"started_at": "2025-01-01T00:00:00+00:00", "wall_s": 4.0, "gpu_s": 4.0}],
        "wall_s": 4.0,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    manifest = Manifest.load_or_new(tmp_path, "old")
    recover(manifest, tmp_path)
    assert manifest.status_reason is None and manifest.wall_s == 4.0
    assert not manifest.sessions[0].accounted_from_log
