"""Fixtures for the trainer's in-process tests: a fresh data dir, settings that run the
stand-in bodies of fake_bodies.py, and a TestClient with the runner started."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    consumed: int
    """Body bytes the app asked for before it answered."""


async def raw_request(
    app: Any,
    method: str,
    path: str,
    *,
    offered: int = 0,
    chunk: int = 1024,
    headers: dict[str, str] | None = None,
) -> RawAnswer:
    """One request straight into the ASGI app, its body (`offered` bytes of spaces, which is
    also valid JSON padding) handed out a chunk at a time and counted: what the app read."""
    consumed = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if consumed >= offered:
            return {"type": "http.disconnect"}
        size = min(chunk, offered - consumed)
        consumed += size
        return {"type": "http.request", "body": b" " * size, "more_body": consumed < offered}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return RawAnswer(start["status"], answer_headers, body, consumed)
