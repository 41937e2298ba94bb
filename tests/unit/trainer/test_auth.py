"""With CAI_TRAINER_API_KEY set, every route but /health needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from tests.unit.trainer.conftest import pairs_jsonl

KEY = "s3cret-key-for-tests"

ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/ds-0123456789abcdef"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/job-x"),
    ("GET", "/v1/jobs/job-x/events"),
    ("GET", "/v1/jobs/job-x/log"),
    ("POST", "/v1/jobs/job-x/cancel"),
    ("GET", "/v1/adapters"),
    ("GET", "/v1/adapters/a"),
    # OpenAI's fine-tuning API (services/trainer/openai_compat): the same key, its error body.
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/ds-0123456789abcdef"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/job-x"),
    ("GET", "/v1/fine_tuning/jobs/job-x/events"),
    ("GET", "/v1/fine_tuning/jobs/job-x/checkpoints"),
    ("POST", "/v1/fine_tuning/jobs/job-x/cancel"),
]


@pytest.fixture
def keyed(settings_factory: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings_factory(api_key=KEY))) as client:
        yield client


def test_every_route_in_the_openapi_schema_is_in_the_table(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    listed = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    templates = {"job-x": "{job_id}", "ds-0123456789abcdef": "{dataset_id}", "a": "{name}"}

    def template(path: str) -> str:
        if path.startswith("/v1/files/"):
            return "/v1/files/{file_id}"
        return "/".join(templates.get(part, part) for part in path.split("/"))

    covered = {(m, template(p)) for m, p in ROUTES}
    assert listed - covered == {("GET", "/health")}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", KEY])
def test_route_needs_the_key(keyed: TestClient, method: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = keyed.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    if path.startswith(("/v1/files", "/v1/fine_tuning")):
        assert response.headers["content-type"] == "application/json"
        assert "Bearer" in response.json()["error"]["message"]
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Bearer" in response.json()["detail"]
    assert KEY not in response.text


def test_health_needs_no_key(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200


def test_the_right_key_opens_every_route(keyed: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert keyed.get("/metrics", headers=auth).status_code == 200
    assert keyed.get("/docs", headers=auth).status_code == 200
    upload = keyed.post(
        "/v1/datasets",
        content=pairs_jsonl(),
        headers=auth | {"content-type": "application/jsonl"},
    )
    assert upload.status_code == 201


def test_the_key_never_reaches_the_log(keyed: TestClient, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.get("/v1/jobs", headers={"Authorization": "Bearer wrong-key-value"})
    keyed.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"})
    assert KEY not in caplog.text and "wrong-key-value" not in caplog.text
