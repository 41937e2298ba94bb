"""`cai trainer ...` through typer's CliRunner, talking to the real app in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from cai.cli import app as cli
from cai.commands import trainer as trainer_commands
from cai.trainer import TrainerClient
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl

runner = CliRunner()


@pytest.fixture
def app(settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    app = create_app(settings)
    app.state.trainer.runner.start()

    def make_client(target: trainer_commands.Target) -> TrainerClient:
        return TrainerClient(
            target.url, api_key=target.api_key, transport=httpx.ASGITransport(app=app)
        )

    monkeypatch.setattr(trainer_commands, "make_client", make_client)
    try:
        yield app
    finally:
        app.state.trainer.runner.stop()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["trainer", *args])
    return result.exit_code, result.output


def upload(tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(pairs_jsonl())
    code, out = invoke("datasets", "upload", str(path), "--json")
    assert code == 0, out
    return str(json.loads(out)["id"])


def test_upload_submit_watch_list_and_show(app: FastAPI, tmp_path: Path) -> None:
    dataset_id = upload(tmp_path)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text("kind: dpo\nbase_model: tiny\nlora:\n  r: 8\ndpo:\n  beta: 0.2\n")
    code, out = invoke(
        "jobs",
        "submit",
        str(recipe),
        "--dataset",
        dataset_id,
        "--output-name",
        "ok-cli",
        "--idempotency-key",
        "cli-1",
        "--watch",
    )
    assert code == 0, out
    assert "succeeded: ok-cli" in out
    code, out = invoke("jobs", "list", "--state", "succeeded")
    assert code == 0 and "ok-cli" in out
    code, out = invoke("adapters", "show", "ok-cli")
    assert code == 0 and json.loads(out)["dataset_id"] == dataset_id
    code, out = invoke("adapters", "list", "--json")
    assert [a["name"] for a in json.loads(out)] == ["ok-cli"]


def test_watch_of_a_failed_job_exits_1_with_the_reason(app: FastAPI, tmp_path: Path) -> None:
    dataset_id = upload(tmp_path)
    recipe = tmp_path / "dpo.json"
    recipe.write_text(json.dumps({"kind": "dpo", "base_model": "tiny"}))
    code, out = invoke(
        "jobs",
        "submit",
        str(recipe),
        "--dataset",
        dataset_id,
        "--output-name",
        "fail-cli",
        "--watch",
    )
    assert code == 1
    assert "failed on purpose" in out


def test_a_refused_job_exits_1_with_the_servers_message(app: FastAPI, tmp_path: Path) -> None:
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text("kind: dpo\nbase_model: nowhere\ndataset_id: ds-0000000000000000\n")
    code, out = invoke("jobs", "submit", str(recipe), "--output-name", "x")
    assert code == 1
    assert "POST /v1/datasets" in out


def test_a_spec_error_is_caught_before_sending(app: FastAPI, tmp_path: Path) -> None:
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text("kind: dpo\nbase_model: tiny\ndataset_id: d\nlora:\n  r: 0\n")
    code, out = invoke("jobs", "submit", str(recipe), "--output-name", "x")
    assert code == 2
    assert "lora.r" in out


def test_cancel_and_show(app: FastAPI, tmp_path: Path) -> None:
    dataset_id = upload(tmp_path)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"kind: dpo\nbase_model: tiny\ndataset_id: {dataset_id}\n")
    code, out = invoke("jobs", "submit", str(recipe), "--output-name", "hang-cli", "--json")
    job_id = json.loads(out)["id"]
    code, out = invoke("jobs", "cancel", job_id)
    assert code == 0 and "cancelled" in out
    code, out = invoke("jobs", "show", job_id)
    assert json.loads(out)["state"] == "cancelled"
