"""The trainer under faults, over real HTTP against `python -m services.trainer` in its own
process: the service SIGKILLed while it works, a job's child killed or out of memory, and a
kill in the middle of an adapter being written. Job bodies: tests/reliability/bodies.py.

    .venv/bin/pytest tests/reliability/test_trainer_faults.py
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

from tests.integration.conftest import TrainerService, pid_alive, wait_state, wait_until
from tests.reliability.conftest import integrity, submit, upload

TERMINAL = ("succeeded", "failed", "cancelled")


def child_pid(trainer: TrainerService, job_id: str) -> int:
    path = trainer.data_dir / "jobs" / job_id / "child.pid"
    wait_until(path.exists, 30, str(path))
    return int(path.read_text())


def exited(pid: int) -> bool:
    return not pid_alive(pid)


def kill_service_and_wait_for_orphans(trainer: TrainerService, children: list[int]) -> None:
    trainer.kill()
    # The job children die with the service (PR_SET_PDEATHSIG): nothing keeps the GPU.
    for pid in children:
        wait_until(partial(exited, pid), 30, f"orphaned child {pid} to exit")


def test_sigkill_of_the_service_under_load_loses_no_accepted_job_and_leaves_none_running(
    start_trainer: Callable[..., TrainerService],
) -> None:
    """Submissions keep arriving and a job reports progress when the service is SIGKILLed:
    every job answered 202 is still there after the restart (the commit came before the
    answer), the running one is failed as interrupted, the queued ones run, the file is whole."""
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    running = submit(client, dataset_id, "hang-under-load")
    wait_until(lambda: client.get(f"/v1/jobs/{running}").json()["progress"]["step"] > 2)
    accepted: list[str] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        with httpx.Client(base_url=trainer.base_url, timeout=10) as own:
            for i in range(10_000):
                if stop.is_set():
                    return
                body = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id}
                try:
                    answer = own.post("/v1/jobs", json=body | {"output_name": f"ok-load-{i}"})
                except httpx.HTTPError:
                    return  # the service is gone
                if answer.status_code == 202:
                    accepted.append(answer.json()["id"])

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    try:
        wait_until(lambda: len(accepted) >= 8, 60, "8 accepted submissions")
        kill_service_and_wait_for_orphans(trainer, [child_pid(trainer, running)])
    finally:
        stop.set()
        submitter.join(30)
    assert integrity(trainer.data_dir / "trainer.db") == "ok"

    trainer.start()
    client = trainer.client()
    interrupted = client.get(f"/v1/jobs/{running}").json()
    assert interrupted["state"] == "failed"
    assert interrupted["error"].startswith("interrupted")
    known = {job["id"] for job in client.get("/v1/jobs").json()["jobs"]}
    assert set(accepted) <= known, "a job answered 202 was lost"
    # `known` may hold one job more: committed, its answer cut off by the kill.
    for job_id in known - {running}:
        assert wait_state(client, job_id, *TERMINAL)["state"] == "succeeded"
    assert client.get("/v1/jobs", params={"state": "running"}).json()["jobs"] == []
    assert client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"] == []
    assert trainer.integrity() == "ok"


def test_a_child_killed_like_the_oom_killer_fails_its_job_with_a_readable_reason(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    victim = submit(client, dataset_id, "oomkill-victim")
    follower = submit(client, dataset_id, "ok-after-oomkill")
    failed = wait_state(client, victim, *TERMINAL)
    assert failed["state"] == "failed"
    assert "killed by SIGKILL" in failed["error"]
    assert "out of memory" in failed["error"]
    assert str(trainer.data_dir / "jobs" / victim / "job.log") in failed["error"]
    assert wait_state(client, follower, *TERMINAL)["state"] == "succeeded"
    assert client.get("/v1/adapters/oomkill-victim").status_code == 404
    assert not (trainer.data_dir / "jobs" / victim / "output").exists()


def test_a_child_that_runs_out_of_memory_fails_its_job_with_a_readable_reason(
    start_trainer: Callable[..., TrainerService],
) -> None:
    """The body caps its address space (RLIMIT_AS) and allocates until the cap is hit."""
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    victim = submit(client, dataset_id, "oom-victim")
    follower = submit(client, dataset_id, "ok-after-oom")
    failed = wait_state(client, victim, *TERMINAL, timeout_s=120)
    assert failed["state"] == "failed"
    assert failed["error"].startswith("MemoryError")
    assert "out of memory" in failed["error"]
    assert "Traceback" not in failed["error"]
    assert wait_state(client, follower, *TERMINAL)["state"] == "succeeded"
    assert client.get("/health").status_code == 200


def assert_no_trace_of(trainer: TrainerService, client: httpx.Client, job_id: str) -> None:
    """The killed job's output is neither listed nor on disk, under any name."""
    name = "tornwrite-adapter"
    assert client.get(f"/v1/adapters/{name}").status_code == 404
    assert name not in {a["name"] for a in client.get("/v1/adapters").json()["adapters"]}
    adapters = trainer.data_dir / "adapters"
    leftovers = sorted(p.name for p in adapters.iterdir()) if adapters.exists() else []
    assert leftovers == [], leftovers
    assert not (trainer.data_dir / "jobs" / job_id / "output").exists()
    big = [
        p
        for p in trainer.data_dir.rglob("adapter_model.safetensors")
        if "work" not in p.relative_to(trainer.data_dir).parts
    ]
    assert big == [], big


def start_torn_write(trainer: TrainerService) -> tuple[httpx.Client, str, int]:
    client = trainer.client()
    job_id = submit(client, upload(client), "tornwrite-adapter")
    marker = trainer.data_dir / "jobs" / job_id / "work" / "writing"
    wait_until(marker.exists, 30, "the body to start writing its adapter")
    staged = trainer.data_dir / "jobs" / job_id / "output" / "adapter_model.safetensors"
    assert staged.stat().st_size > 0  # half-written, in the staging folder
    return client, job_id, child_pid(trainer, job_id)


def test_a_service_killed_while_an_adapter_is_written_leaves_no_adapter_behind(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    _client, job_id, pid = start_torn_write(trainer)
    kill_service_and_wait_for_orphans(trainer, [pid])
    # Debris of a crash between the rename into adapters/ and the registry commit.
    orphan = trainer.data_dir / "adapters" / "half-published"
    orphan.mkdir(parents=True)
    (orphan / "adapter_model.safetensors").write_bytes(b"\x01" * 1024)

    trainer.start()
    client = trainer.client()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"].startswith("interrupted")
    assert_no_trace_of(trainer, client, job_id)
    assert client.get("/v1/adapters/half-published").status_code == 404
    assert trainer.integrity() == "ok"


def test_a_child_killed_while_it_writes_its_adapter_leaves_no_adapter_behind(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client, job_id, pid = start_torn_write(trainer)
    os.kill(pid, signal.SIGKILL)
    failed = wait_state(client, job_id, *TERMINAL)
    assert failed["state"] == "failed" and "SIGKILL" in failed["error"]
    assert_no_trace_of(trainer, client, job_id)
    assert client.get("/health").json()["running"] == 0


def test_integrity_helper_sees_a_damaged_file(tmp_path: Path) -> None:
    """The integrity check the tests above rely on does fail on a damaged database."""
    import sqlite3

    db = tmp_path / "x.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("y" * 500,)] * 200)
        conn.execute("CREATE INDEX t_x ON t (x)")
    data = bytearray(db.read_bytes())
    for page in (1, 2):  # scribble over the b-tree headers of the table's and index's pages
        data[4096 * page : 4096 * page + 16] = b"\x0d" + b"\xff" * 15
    db.write_bytes(bytes(data))
    try:
        verdict = integrity(db)
    except sqlite3.DatabaseError:
        verdict = "malformed"
    assert verdict != "ok"
