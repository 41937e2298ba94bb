"""Issue 13, class 4: every route has a body limit (413 before the body is read past it), and
the key is checked before any body is read (401 without reading a 100 MB body). Requests go
straight into the ASGI app, so the test sees how many body bytes the app asked for."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import raw_request, snapshot

KEY = "door-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 4096
HUNDRED_MB = 100 * 1024 * 1024
# Routes whose bodies the door leaves to the route: the dashboard's page and its sign-in.
NO_KEY_ROUTES = {("GET", "/"), ("GET", "/health"), ("GET", "/login"), ("POST", "/login")}


@pytest.fixture
def keyed(settings_factory: Callable[..., TrainerSettings]) -> Iterator[tuple[FastAPI, Any]]:
    settings = settings_factory(api_key=KEY, max_request_bytes=LIMIT, max_upload_bytes=LIMIT)
    app = create_app(settings)
    with TestClient(app) as client:
        yield app, client


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, parameters filled in."""
    found = set()

    def walk(table: list[Any]) -> None:
        for route in table:
            branch = getattr(route, "original_router", None)
            if branch is not None:
                walk(branch.routes)
            elif getattr(route, "methods", None):
                path = re.sub(r"\{[^}]+\}", "x-1", route.path)
                found.update((m, path) for m in route.methods - {"HEAD"})

    walk(list(app.router.routes))
    return sorted(found)


async def test_a_100_mb_job_without_the_key_is_refused_before_a_byte_is_read(
    keyed: tuple[FastAPI, Any],
) -> None:
    app, _ = keyed
    for headers in ({}, {"content-length": str(HUNDRED_MB)}, {"Authorization": "Bearer wrong"}):
        answer = await raw_request(
            app, "POST", "/v1/jobs", offered=HUNDRED_MB, chunk=1 << 20, headers=headers
        )
        assert answer.status == 401, answer.body
        assert answer.consumed == 0
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <key>" in answer.body["detail"]


async def test_every_keyed_route_refuses_a_keyless_body_without_reading_it(
    keyed: tuple[FastAPI, Any],
) -> None:
    app, _ = keyed
    checked = 0
    for method, path in routes(app):
        if (method, path) in NO_KEY_ROUTES | {("POST", "/logout")}:
            continue
        answer = await raw_request(app, method, path, offered=10 * LIMIT)
        assert (answer.status, answer.consumed) == (401, 0), (method, path)
        checked += 1
    assert checked >= 14


async def test_every_route_refuses_a_declared_length_over_its_limit_unread(
    keyed: tuple[FastAPI, Any],
) -> None:
    app, _ = keyed
    uploads = {("POST", "/v1/datasets"), ("POST", "/v1/files")}
    for method, path in routes(app):
        over = LIMIT + 64 * 1024 + 1 if (method, path) in uploads else LIMIT + 1
        headers = AUTH | {"content-length": str(over), "content-type": "application/json"}
        answer = await raw_request(app, method, path, offered=over, headers=headers)
        assert answer.status == 413, (method, path, answer.status, answer.body)
        assert answer.consumed == 0, (method, path)
        if path.startswith(("/v1/files", "/v1/fine_tuning")):  # OpenAI's error body
            assert answer.headers["content-type"] == "application/json"
            assert "_BYTES" in answer.body["error"]["message"]
            continue
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.body["status"] == 413
        assert "_BYTES" in answer.body["detail"]


async def test_a_streamed_job_body_over_the_limit_stops_being_read_at_the_limit(
    keyed: tuple[FastAPI, Any], settings_factory: Callable[..., TrainerSettings]
) -> None:
    app, _ = keyed
    before = snapshot(settings_factory().data_dir)
    headers = AUTH | {"content-type": "application/json"}
    answer = await raw_request(
        app, "POST", "/v1/jobs", offered=HUNDRED_MB, chunk=1024, headers=headers
    )
    assert answer.status == 413, answer.body
    assert answer.consumed <= LIMIT + 1024
    assert "limit of 4096 bytes" in answer.body["detail"]
    assert "CAI_TRAINER_MAX_REQUEST_BYTES" in answer.body["detail"]
    assert snapshot(settings_factory().data_dir) == before


def test_a_job_body_just_under_the_limit_is_accepted(
    keyed: tuple[FastAPI, Any], tmp_path: Any
) -> None:
    _, client = keyed
    upload = client.post(
        "/v1/datasets",
        content=b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n',
        headers=AUTH | {"content-type": "application/jsonl"},
    )
    spec = {"kind": "dpo", "base_model": "tiny", "dataset_id": upload.json()["id"]}
    body = json.dumps(spec | {"output_name": "ok-padded"}).encode()
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    response = client.post(
        "/v1/jobs", content=padded, headers=AUTH | {"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
    over = body[:-1] + b" " * (LIMIT + 1 - len(body)) + b"}"
    refused = client.post(
        "/v1/jobs", content=over, headers=AUTH | {"content-type": "application/json"}
    )
    assert refused.status_code == 413


def test_an_upload_keeps_its_own_limit_and_message(keyed: tuple[FastAPI, Any]) -> None:
    _, client = keyed
    body = b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 200  # ~10 KB
    response = client.post(
        "/v1/datasets", content=body, headers=AUTH | {"content-type": "application/jsonl"}
    )
    assert response.status_code == 413
    assert "limit of 4096 bytes" in response.json()["detail"]
    assert "CAI_TRAINER_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_the_request_limit_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAI_TRAINER_MAX_REQUEST_BYTES", "65536")
    assert TrainerSettings().max_request_bytes == 65536
    monkeypatch.setenv("CAI_TRAINER_MAX_REQUEST_BYTES", "10")
    with pytest.raises(ValueError, match="max_request_bytes"):
        TrainerSettings()
