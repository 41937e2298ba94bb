"""The runner under faults, over real HTTP against `python -m services.trainer`:
a job's child killed with SIGKILL, the service itself killed and restarted.
Jobs run the stand-in bodies of tests/unit/trainer/fake_bodies.py."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable
from typing import Any

import httpx

from tests.integration.conftest import (
    TrainerService,
    pid_alive,
    wait_state,
    wait_until,
)
from tests.unit.trainer.conftest import pairs_jsonl

JSONL = {"content-type": "application/jsonl"}


def upload(client: httpx.Client) -> str:
    response = client.post("/v1/datasets", content=pairs_jsonl(), headers=JSONL)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def submit(client: httpx.Client, dataset_id: str, name: str) -> str:
    body = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": name}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def child_pid(trainer: TrainerService, job_id: str) -> int:
    path = trainer.data_dir / "jobs" / job_id / "child.pid"
    wait_until(path.exists, 30, f"{path}")
    return int(path.read_text())


def test_sigkill_of_the_child_fails_the_job_with_the_reason_and_the_next_job_runs(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    victim = submit(client, dataset_id, "hang-victim")
    follower = submit(client, dataset_id, "ok-follower")
    wait_state(client, victim, "running")
    wait_until(lambda: client.get(f"/v1/jobs/{victim}").json()["progress"]["step"] > 0)
    os.kill(child_pid(trainer, victim), signal.SIGKILL)
    failed = wait_state(client, victim, "failed", "succeeded", "cancelled")
    assert failed["state"] == "failed"
    assert "killed by SIGKILL" in failed["error"]
    assert wait_state(client, follower, "succeeded", "failed")["state"] == "succeeded"
    names = [a["name"] for a in client.get("/v1/adapters").json()["adapters"]]
    assert names == ["ok-follower"]
    assert not (trainer.data_dir / "jobs" / victim / "output").exists()
    assert client.get("/health").status_code == 200


def test_an_exception_in_the_body_is_the_reason(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    job = submit(client, upload(client), "fail-body")
    failed = wait_state(client, job, "failed", "succeeded")
    assert failed["error"] == "ValueError: the fake body failed on purpose"
    assert "Traceback" in client.get(f"/v1/jobs/{job}/log").text


def test_restart_after_sigkill_leaves_no_job_running_and_runs_the_queue(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    running = submit(client, dataset_id, "hang-interrupted")
    queued = [submit(client, dataset_id, f"ok-queued-{i}") for i in range(2)]
    wait_state(client, running, "running")
    orphan = child_pid(trainer, running)

    trainer.kill()
    # The job's child dies with the service (PR_SET_PDEATHSIG): the GPU is freed.
    wait_until(lambda: not pid_alive(orphan), 30, "the orphaned job child to exit")

    trainer.start()
    client = trainer.client()
    interrupted = client.get(f"/v1/jobs/{running}").json()
    assert interrupted["state"] == "failed"
    assert interrupted["error"].startswith("interrupted")
    for job_id in queued:
        assert wait_state(client, job_id, "succeeded", "failed")["state"] == "succeeded"
    assert client.get("/v1/jobs?state=running").json()["jobs"] == []
    assert trainer.integrity() == "ok"
    assert not (trainer.data_dir / "jobs" / running / "output").exists()
    assert client.get("/v1/adapters/hang-interrupted").status_code == 404


def test_graceful_restart_keeps_queued_jobs(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    blocker = submit(client, dataset_id, "hang-blocker")
    waiting = submit(client, dataset_id, "ok-waiting")
    wait_state(client, blocker, "running")
    trainer.restart()
    client = trainer.client()
    assert client.get(f"/v1/jobs/{blocker}").json()["state"] == "failed"
    done = wait_state(client, waiting, "succeeded", "failed")
    assert done["state"] == "succeeded", done["error"]
    assert trainer.integrity() == "ok"


def test_jobs_run_one_at_a_time_in_submission_order(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    dataset_id = upload(client)
    jobs = [submit(client, dataset_id, f"ok-order-{i}") for i in range(4)]
    finished: list[dict[str, Any]] = [
        wait_state(client, job, "succeeded", "failed") for job in jobs
    ]
    assert all(job["state"] == "succeeded" for job in finished)
    for earlier, later in itertools.pairwise(finished):
        assert earlier["finished_at"] <= later["started_at"]
