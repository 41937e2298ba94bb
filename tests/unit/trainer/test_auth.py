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
]


@pytest.fixture
def keyed(settings_factory: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings_factory(api_key=KEY))) as client:
        yield client


def test_every_route_in_the_openapi_schema_is_in_the_table(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    listed = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    templates = {"job-x": "{job_id}", "ds-0123456789abcdef": "{dataset_id}", "a": "{name}"}
    covered = {(m, "/".join(templates.get(part, part) for part in p.split("/"))) for m, p in ROUTES}
    assert listed - covered == {("GET", "/health")}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", KEY])
def test_route_needs_the_key(keyed: TestClient, method: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = keyed.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"] == "Bearer"
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
