"""Issue 13, class 1 (the lasting harm): a stored row the trainer cannot read never takes a
listing down. The rows here are written the way the old bug wrote them (`Infinity` stored as
`null`), or with values a tightened bound no longer accepts, straight into SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import Any

from fastapi.testclient import TestClient

from protocol.jobs import DpoJobSpec, JobState
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from services.trainer.core.db import Database
from services.trainer.store import Store, utcnow
from services.trainer.stored import finite, salvage
from tests.unit.trainer.conftest import wait_for_state

NOW = "2026-01-01T00:00:00+00:00"


def spec(dataset_id: str, name: str) -> dict[str, Any]:
    return {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": name}


def insert_job(
    settings: TrainerSettings,
    job_id: str,
    spec_json: str,
    *,
    state: str = "queued",
    progress: str = "{}",
    result: str = "{}",
    kind: str = "dpo",
    name: str = "ok-stored",
) -> None:
    with closing(sqlite3.connect(settings.db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, state, spec, output_name, created_at, progress, result)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, kind, state, spec_json, name, NOW, progress, result),
        )
        body = json.dumps(
            {"job_id": job_id, "seq": 1, "type": "state", "time": NOW, "state": state}
        )
        conn.execute(
            "INSERT INTO job_events (job_id, seq, type, body) VALUES (?, 1, 'state', ?)",
            (job_id, body),
        )


def null_beta(dataset_id: str, name: str = "ok-stored") -> str:
    """What the old trainer stored for `"dpo": {"beta": Infinity}`."""
    return json.dumps(spec(dataset_id, name) | {"dpo": {"beta": None}})


def test_a_queued_row_stored_with_a_null_beta_fails_and_the_queue_goes_on(
    client: TestClient, settings: TrainerSettings, dataset_id: str
) -> None:
    insert_job(settings, "job-0000000000000bad", null_beta(dataset_id))
    listing = client.get("/v1/jobs")
    assert listing.status_code == 200, listing.text
    (shown,) = listing.json()["jobs"]
    assert shown["state"] == "failed"
    assert "dpo.beta" in shown["error"] and "Submit the job again" in shown["error"]
    # The worker fails it instead of marking it running and wedging; the next job runs.
    good = client.post("/v1/jobs", json=spec(dataset_id, "ok-after"))
    assert good.status_code == 202, good.text
    assert wait_for_state(client, good.json()["id"], {"succeeded"})["state"] == "succeeded"
    with closing(sqlite3.connect(settings.db_path)) as conn:
        (state,) = conn.execute("SELECT state FROM jobs WHERE id='job-0000000000000bad'").fetchone()
    assert state == "failed"
    assert client.get("/v1/jobs/job-0000000000000bad").json()["state"] == "failed"


def test_the_listing_answers_after_a_restart_with_an_unreadable_row(
    settings_factory: Callable[..., TrainerSettings],
) -> None:
    settings = settings_factory()
    Database(settings.db_path).close()  # the schema, as a trainer that ran before left it
    insert_job(settings, "job-00000000000bad01", "not json at all", state="running")
    insert_job(settings, "job-00000000000bad02", null_beta("ds-0", "ok-b2"), state="running")
    with TestClient(create_app(settings)) as restarted:
        jobs = {job["id"]: job for job in restarted.get("/v1/jobs").json()["jobs"]}
    assert {jobs[i]["state"] for i in ("job-00000000000bad01", "job-00000000000bad02")} == {
        "failed"
    }
    assert "interrupted" in jobs["job-00000000000bad02"]["error"]
    assert "cannot read" in jobs["job-00000000000bad01"]["error"]


def test_a_finished_job_whose_spec_a_tighter_bound_refuses_keeps_its_state(
    client: TestClient, settings: TrainerSettings, dataset_id: str
) -> None:
    old = json.dumps(spec(dataset_id, "ok-old") | {"lora": {"r": 1024}})  # r <= 1024 once
    insert_job(settings, "job-00000000000old01", old, state="succeeded", name="ok-old")
    job = client.get("/v1/jobs/job-00000000000old01").json()
    assert job["state"] == "succeeded"
    assert "lora.r" in job["error"] and "defaults in place" in job["error"]
    assert job["spec"]["lora"]["r"] == 64  # the default, said so in `error`


def test_non_finite_progress_results_and_events_stored_by_an_old_trainer_still_read(
    client: TestClient, settings: TrainerSettings, dataset_id: str
) -> None:
    good = json.dumps(spec(dataset_id, "ok-metrics"))
    progress = json.dumps({"step": 3, "metrics": {"loss": None, "rewards/margins": 0.5}})
    result = '{"metrics": {"loss": NaN, "eval_loss": Infinity}, "output_name": "ok-metrics"}'
    insert_job(
        settings,
        "job-00000000000nan01",
        good,
        state="failed",
        progress=progress,
        result=result,
        name="ok-metrics",
    )
    with closing(sqlite3.connect(settings.db_path)) as conn, conn:
        event = {"job_id": "job-00000000000nan01", "seq": 2, "type": "progress", "time": NOW}
        event["progress"] = json.loads(progress)
        conn.execute(
            "INSERT INTO job_events (job_id, seq, type, body) VALUES (?, 2, 'progress', ?)",
            ("job-00000000000nan01", json.dumps(event)),
        )
    job = client.get("/v1/jobs/job-00000000000nan01").json()
    assert job["progress"]["step"] == 3
    assert job["progress"]["metrics"] == {"rewards/margins": 0.5}
    assert job["result"]["metrics"] == {"loss": None, "eval_loss": None}
    assert client.get("/v1/jobs").status_code == 200
    events = client.get("/v1/jobs/job-00000000000nan01/events?after=1")
    assert events.status_code == 200 and "event: progress" in events.text
    assert client.get("/metrics").status_code == 200


def test_an_adapter_row_with_null_metrics_is_still_listed(
    client: TestClient, settings: TrainerSettings
) -> None:
    record = {
        "name": "old-adapter",
        "kind": "lora",
        "path": "/x",
        "base_model": "tiny",
        "metrics": {"loss": None, "rewards/accuracies": 1.0},
        "created_at": NOW,
    }
    with closing(sqlite3.connect(settings.db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO adapters (name, kind, created_at, record) VALUES (?, 'lora', ?, ?)",
            ("old-adapter", NOW, json.dumps(record)),
        )
        conn.execute(
            "INSERT INTO adapters (name, kind, created_at, record) VALUES ('junk', 'lora', ?, ?)",
            (NOW, "{"),
        )
    listing = client.get("/v1/adapters")
    assert listing.status_code == 200, listing.text
    names = [a["name"] for a in listing.json()["adapters"]]
    assert "old-adapter" in names
    shown = client.get("/v1/adapters/old-adapter").json()
    assert shown["metrics"] == {"rewards/accuracies": 1.0}


def test_what_the_trainer_writes_now_has_finite_numbers_only(settings: TrainerSettings) -> None:
    store = Store(Database(settings.db_path))
    job_id = "job-0000000000write1"
    insert_job(settings, job_id, json.dumps(spec("ds-x", "ok-w")), state="running", name="ok-w")
    store.finish_job(job_id, JobState.succeeded, result={"metrics": {"loss": float("nan")}, "n": 1})
    with closing(sqlite3.connect(settings.db_path)) as conn:
        (text,) = conn.execute("SELECT result FROM jobs WHERE id=?", (job_id,)).fetchone()
    assert json.loads(text) == {"metrics": {"loss": None}, "n": 1}
    assert "NaN" not in text
    job = store.get_job(job_id)
    assert job is not None and job.finished_at is not None and job.finished_at <= utcnow()


def test_salvage_drops_what_fails_and_fills_what_is_required() -> None:
    raw = json.dumps(
        {"kind": "dpo", "dataset_id": "d", "output_name": "../x", "dpo": {"beta": None}, "z": 1}
    )
    fill = {"base_model": "unreadable", "output_name": "ok-fill"}
    record, problems = salvage(DpoJobSpec, raw, fill)
    assert (record.base_model, record.output_name, record.dpo.beta) == (
        "unreadable",
        "ok-fill",
        0.1,
    )
    assert any("dpo.beta" in p for p in problems)
    assert finite({"a": [float("inf"), 1.0], "b": float("-inf")}) == {"a": [None, 1.0], "b": None}
