"""Fixtures of the reliability tier: a trainer in its own process over real HTTP (the
integration tier's `TrainerService`), in-process settings, and helpers that say what a
refused request or a crash must leave unchanged. Job bodies are tests/reliability/bodies.py.

    .venv/bin/pytest tests/reliability                  # everything (as `make test` does)
    .venv/bin/pytest tests/reliability -m "not slow"    # the quick part
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.trainer.core.config import TrainerSettings
from tests.integration.conftest import TrainerService, trainer_factory
from tests.unit.trainer.conftest import pairs_jsonl

BODY = "tests.reliability.bodies:run"
JSONL = {"content-type": "application/jsonl"}
TABLES = ("jobs", "job_events", "datasets", "adapters", "idempotency_keys")


@pytest.fixture
def start_trainer(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., TrainerService]]:
    """`start_trainer(api_key=None, **settings)`: `python -m services.trainer` on a free port
    with its own data dir, running the bodies of tests/reliability/bodies.py."""
    with trainer_factory(tmp_path, tiny_model) as start:
        yield functools.partial(start, BODY)


@pytest.fixture
def settings_factory(tmp_path: Path, tiny_model: Path) -> Callable[..., TrainerSettings]:
    """In-process settings: fresh data dir, the tiny model's root, the test bodies."""

    def make(**overrides: object) -> TrainerSettings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "model_roots": [tiny_model.parent],
            "device": "cpu",
            "job_bodies": {"dpo": BODY, "merge": BODY},
            "cancel_grace_s": 1.0,
        }
        values.update(overrides)
        return TrainerSettings(**values)  # type: ignore[arg-type]

    return make


def upload(client: httpx.Client, body: bytes | None = None) -> str:
    response = client.post("/v1/datasets", content=body or pairs_jsonl(), headers=JSONL)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def dpo_body(dataset_id: str, name: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "dpo",
        "base_model": "tiny",
        "dataset_id": dataset_id,
        "output_name": name,
    } | fields


def submit(client: httpx.Client, dataset_id: str, name: str, **fields: Any) -> str:
    response = client.post("/v1/jobs", json=dpo_body(dataset_id, name, **fields))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def file_tree(data_dir: Path) -> dict[str, int]:
    """Every file under the data dir (SQLite's own files aside) with its size."""
    return {
        str(p.relative_to(data_dir)): p.stat().st_size
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("trainer.db")
    }


def row_counts(db_path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db_path)) as conn:
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}


def integrity(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
