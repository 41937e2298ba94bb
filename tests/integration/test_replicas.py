"""The pipeline over two generator replicas (two stub servers, tests/support/stub_generator.py).

    .venv/bin/pytest tests/integration/test_replicas.py

- one replica SIGKILLed mid-run and never restarted: the run finishes on the other with every
  record of an uninterrupted single-endpoint run (per-step JSONL sorted by id: seeds are per
  record, so which replica answered does not matter), nothing failed, the retries counted;
- a replica that is down from the start costs the run nothing but a few retries.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cai.pipeline import PipelineConfig, run_pipeline
from cai.pipeline.records import STEPS
from tests.conftest import free_port
from tests.support.stub_generator import StubServer

FILES = (*STEPS, "train", "test")
STUB = {"models": ["tiny"], "duplicate_rate": 0.15, "delay": "const:0.005"}


def _config(urls: list[str]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "replicas",
            "seed": 99,
            "model": "tiny",
            "endpoints": [{"url": url, "concurrency": 4} for url in urls],
            "instructions": {"counts": {"qa": 6, "completion": 6, "generation": 6, "response": 6}},
            "critiques": {"rounds": 2},
            # A short cool-down, so the dead replica is probed (and refuses) during the run.
            "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05, "cooldown_s": 0.2},
        }
    )


def _records(run_dir: Path) -> dict[str, list[str]]:
    return {name: sorted((run_dir / f"{name}.jsonl").read_text().splitlines()) for name in FILES}


def _statuses(run_dir: Path) -> set[str]:
    return {
        json.loads(line)["status"]
        for step in STEPS
        for line in (run_dir / f"{step}.jsonl").read_text().splitlines()
    }


class KillAfter:
    """A progress sink that SIGKILLs a replica once `count` records of `step` are written."""

    def __init__(self, replica: StubServer, step: str, count: int) -> None:
        self.replica = replica
        self.step = step
        self.count = count
        self.seen = 0
        self.served_before: dict[str, Any] | None = None

    def planned(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, status: str) -> None:
        if step != self.step:
            return
        self.seen += 1
        if self.seen == self.count:
            assert self.replica.process is not None
            self.served_before = self.replica.stats()
            os.kill(self.replica.process.pid, signal.SIGKILL)


@pytest.fixture
def replicas():
    with StubServer(**STUB) as first, StubServer(**STUB) as second:
        yield first, second


async def test_a_replica_killed_mid_run_loses_nothing(replicas, tmp_path, caplog):
    first, second = replicas
    reference = tmp_path / "reference"
    await run_pipeline(_config([first.base_url]), reference)

    run = tmp_path / "replicas"
    killer = KillAfter(second, "critiques", 10)
    with caplog.at_level(logging.WARNING, logger="cai.pipeline.endpoints"):
        summary = await run_pipeline(
            _config([first.base_url, second.base_url]), run, progress=killer
        )

    assert killer.served_before is not None, "the run ended before the kill"
    assert killer.served_before["completion_requests"] > 0  # both replicas were working
    assert summary.status == "complete" and summary.failures == {}
    assert "failed" not in _statuses(run)
    assert _records(run) == _records(reference)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["failed_requests"] == 0
    reasons = manifest["sessions"][-1]["retry_reasons"]
    assert manifest["retries"] >= 1 and reasons.get("GeneratorConnectionError", 0) >= 1, reasons
    assert any(second.base_url in r.getMessage() for r in caplog.records), "never tripped"
    assert {m["endpoint"] for m in manifest["served_models"]} == {
        first.base_url,
        second.base_url,
    }


async def test_a_replica_down_from_the_start_costs_only_retries(replicas, tmp_path):
    first, _ = replicas
    reference = tmp_path / "reference"
    await run_pipeline(_config([first.base_url]), reference)
    nobody = f"http://127.0.0.1:{free_port()}"

    run = tmp_path / "one-down"
    summary = await run_pipeline(_config([nobody, first.base_url]), run)

    assert summary.status == "complete" and summary.failures == {}
    assert _records(run) == _records(reference)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["failed_requests"] == 0 and manifest["retries"] >= 1
