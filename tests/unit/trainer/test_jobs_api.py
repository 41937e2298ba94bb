"""Job lifecycle through the API, in-process: the real runner and child processes running
the stand-in bodies of fake_bodies.py, real SQLite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import wait_for_state


def dpo(dataset_id: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": name}


def submit(client: TestClient, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/jobs", json=body, headers=headers)


def test_job_succeeds_and_registers_its_adapter_with_checksums(
    client: TestClient, dataset_id: str, settings: TrainerSettings
) -> None:
    job = submit(client, dpo(dataset_id, "ok-first")).json()
    done = wait_for_state(client, job["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    adapter = client.get("/v1/adapters/ok-first").json()
    folder = settings.data_dir / "adapters" / "ok-first"
    assert adapter["path"] == str(folder)
    assert adapter["kind"] == "lora" and adapter["job_id"] == job["id"]
    assert adapter["dataset_id"] == dataset_id and adapter["rank"] == 8
    assert adapter["files"] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("adapter_config.json", "weights.bin")
    }
    assert adapter["metrics"]["rewards/accuracies"] == 1.0
    assert not (settings.data_dir / "jobs" / job["id"] / "output").exists()
    assert (settings.data_dir / "jobs" / job["id"] / "job.log").read_text()


def test_same_idempotency_key_and_body_give_one_job(client: TestClient, dataset_id: str) -> None:
    first = submit(client, dpo(dataset_id, "hang-idem"), key="key-1")
    again = submit(client, dpo(dataset_id, "hang-idem"), key="key-1")
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_same_idempotency_key_with_another_body_is_409(client: TestClient, dataset_id: str) -> None:
    first = submit(client, dpo(dataset_id, "ok-one"), key="key-2")
    other = submit(client, dpo(dataset_id, "ok-two"), key="key-2")
    assert other.status_code == 409
    assert first.json()["id"] in other.json()["detail"]
    assert "new key" in other.json()["detail"]


def test_idempotent_replay_after_the_job_finished_returns_it(
    client: TestClient, dataset_id: str
) -> None:
    first = submit(client, dpo(dataset_id, "ok-replay"), key="key-3").json()
    wait_for_state(client, first["id"], {"succeeded"})
    again = submit(client, dpo(dataset_id, "ok-replay"), key="key-3")
    assert again.status_code == 200 and again.json()["id"] == first["id"]


def test_cancel_a_queued_job(client: TestClient, dataset_id: str) -> None:
    running = submit(client, dpo(dataset_id, "hang-blocker")).json()
    queued = submit(client, dpo(dataset_id, "ok-waiting")).json()
    assert client.get(f"/v1/jobs/{queued['id']}").json()["position"] == 0
    cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 409
    client.post(f"/v1/jobs/{running['id']}/cancel")


def test_cancel_a_running_job_kills_its_child(
    client: TestClient, dataset_id: str, settings: TrainerSettings
) -> None:
    job = submit(client, dpo(dataset_id, "hang-cancel")).json()
    wait_for_state(client, job["id"], {"running"})
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert not (settings.data_dir / "adapters" / "hang-cancel").exists()
    assert client.get("/v1/adapters").json()["adapters"] == []
    pid = int((settings.data_dir / "jobs" / job["id"] / "child.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    # The output name is free again.
    assert submit(client, dpo(dataset_id, "hang-cancel")).status_code == 202


def test_a_failing_body_fails_the_job_with_its_message_and_the_next_runs(
    client: TestClient, dataset_id: str
) -> None:
    bad = submit(client, dpo(dataset_id, "fail-a")).json()
    good = submit(client, dpo(dataset_id, "ok-after")).json()
    failed = wait_for_state(client, bad["id"], {"succeeded", "failed"})
    assert failed["state"] == "failed"
    assert failed["error"] == "ValueError: the fake body failed on purpose"
    assert wait_for_state(client, good["id"], {"succeeded", "failed"})["state"] == "succeeded"
    assert client.get("/v1/adapters/fail-a").status_code == 404


def test_a_body_that_writes_nothing_fails(client: TestClient, dataset_id: str) -> None:
    job = submit(client, dpo(dataset_id, "nowrite-x")).json()
    done = wait_for_state(client, job["id"], {"succeeded", "failed"})
    assert done["state"] == "failed" and "wrote nothing" in str(done["error"])


def test_events_show_progress_from_first_step_to_end_and_resume(
    client: TestClient, dataset_id: str
) -> None:
    job = submit(client, dpo(dataset_id, "ok-events")).json()
    events = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    steps = [e["progress"]["step"] for e in events if e["type"] == "progress"]
    assert steps == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    resumed = []
    with client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(events[-3]["seq"])}
    ) as stream:
        resumed = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: ")]
    assert resumed == events[-2:]


def test_list_jobs_filters_by_state(client: TestClient, dataset_id: str) -> None:
    job = submit(client, dpo(dataset_id, "ok-list")).json()
    wait_for_state(client, job["id"], {"succeeded"})
    assert [j["id"] for j in client.get("/v1/jobs?state=succeeded").json()["jobs"]] == [job["id"]]
    assert client.get("/v1/jobs?state=queued").json()["jobs"] == []
    assert client.get("/v1/jobs?state=bogus").status_code == 422


def test_merge_registers_a_model_usable_as_a_base(
    client: TestClient, dataset_id: str, tiny_model: Path
) -> None:
    trained = submit(client, dpo(dataset_id, "ok-lora")).json()
    wait_for_state(client, trained["id"], {"succeeded"})
    merge = submit(client, {"kind": "merge", "adapter": "ok-lora", "output_name": "ok-merged"})
    assert merge.status_code == 202, merge.text
    assert wait_for_state(client, merge.json()["id"], {"succeeded", "failed"})["state"] == (
        "succeeded"
    )
    model = client.get("/v1/adapters/ok-merged").json()
    assert model["kind"] == "merged" and model["parent_adapter"] == "ok-lora"
    assert model["path"].endswith("/models/ok-merged")
    assert [a["name"] for a in client.get("/v1/adapters?kind=merged").json()["adapters"]] == [
        "ok-merged"
    ]
    # A merged model is a base for later jobs; its folder is not a model folder here
    # (the fake body writes no config.json), but the registry resolves it by name.
    assert (
        submit(client, {**dpo(dataset_id, "hang-on-merged"), "base_model": "ok-merged"}).status_code
        == 202
    )


def test_merge_onto_another_base_is_refused(
    client: TestClient, dataset_id: str, tiny_model: Path, settings: TrainerSettings
) -> None:
    other = tiny_model.parent / "tiny-other-for-test"
    other.mkdir(exist_ok=True)
    try:
        (other / "config.json").write_text("{}")
        trained = submit(client, dpo(dataset_id, "ok-base")).json()
        wait_for_state(client, trained["id"], {"succeeded"})
        response = submit(
            client,
            {"kind": "merge", "adapter": "ok-base", "base_model": other.name, "output_name": "m"},
        )
        assert response.status_code == 422
        assert "trained on 'tiny'" in response.json()["detail"]
    finally:
        (other / "config.json").unlink()
        other.rmdir()


def test_parent_adapter_must_share_the_base(client: TestClient, dataset_id: str) -> None:
    trained = submit(client, dpo(dataset_id, "ok-parent")).json()
    wait_for_state(client, trained["id"], {"succeeded"})
    child = {**dpo(dataset_id, "ok-child"), "parent_adapter": "ok-parent"}
    assert submit(client, child).status_code == 202


def test_metrics_count_jobs_by_state(client: TestClient, dataset_id: str) -> None:
    job = submit(client, dpo(dataset_id, "ok-metrics")).json()
    wait_for_state(client, job["id"], {"succeeded"})
    text = client.get("/metrics").text
    assert 'cai_trainer_jobs{state="succeeded"} 1.0' in text
    assert "cai_trainer_queue_depth 0.0" in text
    assert "cai_trainer_training_tokens_per_second" in text


def test_job_log_is_readable(client: TestClient, dataset_id: str) -> None:
    job = submit(client, dpo(dataset_id, "ok-log")).json()
    wait_for_state(client, job["id"], {"succeeded"})
    assert "fake body in mode ok" in client.get(f"/v1/jobs/{job['id']}/log").text
