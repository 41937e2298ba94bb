"""Fixtures for the trainer's in-process tests: a fresh data dir, settings that run the
stand-in bodies of fake_bodies.py, and a TestClient with the runner started."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings

FAKE = "tests.unit.trainer.fake_bodies:run"


def pairs_jsonl(n: int = 4, prefix: str = "p") -> bytes:
    rows = [
        {"prompt": f"{prefix}{i}: say hi", "chosen": f"hello {i}", "rejected": f"go away {i}"}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture
def settings_factory(tmp_path: Path, tiny_model: Path) -> Callable[..., TrainerSettings]:
    def make(**overrides: object) -> TrainerSettings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "model_roots": [tiny_model.parent],
            "device": "cpu",
            "job_bodies": {"dpo": FAKE, "merge": FAKE},
            "cancel_grace_s": 1.0,
        }
        values.update(overrides)
        return TrainerSettings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., TrainerSettings]) -> TrainerSettings:
    return settings_factory()


@pytest.fixture
def client(settings: TrainerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def dataset_id(client: TestClient) -> str:
    response = client.post(
        "/v1/datasets", content=pairs_jsonl(), headers={"content-type": "application/jsonl"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def snapshot(data_dir: Path) -> tuple[frozenset[str], dict[str, int]]:
    """Files on disk (SQLite's own files aside) and row counts: what a refused request must
    leave unchanged."""
    import sqlite3

    files = frozenset(
        str(p.relative_to(data_dir))
        for p in data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("trainer.db")
    )
    with sqlite3.connect(data_dir / "trainer.db") as conn:
        counts = {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("jobs", "job_events", "datasets", "adapters", "idempotency_keys")
        }
    return files, counts


def wait_for_state(
    client: TestClient, job_id: str, states: set[str], timeout_s: float = 60.0
) -> dict[str, object]:
    """Follow the job's event stream until it reaches one of `states`."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout_s) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "state" and event["state"] in states:
                    break
    job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
    return job
