"""Nobody let in: with a key configured every trainer route but /health needs it (the routes
are read from the app itself, so a new one cannot slip through), the key is compared in
constant time, the embedded default listens on 127.0.0.1 only, no key reaches a log line, and
the generator is started with `--api-key` and sent the key by the client.

    .venv/bin/pytest tests/reliability/test_security.py
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from cai.generator import GeneratorClient
from cai.generator.errors import GeneratorError
from cai.trainer import TrainerAuthError, TrainerClient
from embedded.launch import ROOT, TINY_MODEL, generator_spec, trainer_spec
from services.generator.settings import GeneratorSettings
from services.trainer.api.deps import SESSION_COOKIE, session_token
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.integration.conftest import TrainerService, wait_state
from tests.reliability.conftest import submit, upload

KEY = "k3y-that-must-never-be-logged-7f1c"
# The only routes that answer without the key, each because it neither reveals nor changes
# anything: the health probe, the dashboard's sign-in form and its sign-out (which only
# clears the browser's cookie). A route added without the key check fails the tests below.
OPEN_ROUTES = {("GET", "/health"), ("GET", "/login"), ("POST", "/logout")}
# Takes the key in its form body and answers a browser: 401 with the form again, not JSON.
FORM_ROUTES = {("POST", "/login")}


@pytest.fixture
def keyed_app(settings_factory: Callable[..., TrainerSettings]) -> FastAPI:
    return create_app(settings_factory(api_key=KEY))


@pytest.fixture
def keyed(keyed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(keyed_app) as client:
        yield client


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    for route in routes:
        branch = getattr(route, "original_router", None)
        if branch is not None:  # FastAPI 0.16x keeps an included router as a branch
            yield from _walk(branch.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)
        elif isinstance(route, Route) and route.methods:
            yield prefix + route.path, set(route.methods)


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with its parameters filled in) for every route the app answers, the
    ones left out of the OpenAPI schema (/openapi.json, /docs) included. If FastAPI changes
    how it keeps routes, the cross-check with the schema below fails rather than this
    silently finding fewer."""
    found = set()
    for path, methods in _walk(list(app.router.routes)):
        filled = re.sub(r"\{[^}]+\}", "x-1", path)
        found |= {(method, filled) for method in methods - {"HEAD"}}
    return sorted(found)


def test_the_route_table_holds_every_documented_operation(keyed_app: FastAPI) -> None:
    table = {(m, re.sub("x-1", "{}", p)) for m, p in every_route(keyed_app)}
    documented = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in keyed_app.openapi()["paths"].items()
        for method in item
    }
    assert documented <= table
    assert {("GET", "/v1/jobs/{}/events"), ("GET", "/metrics"), ("GET", "/openapi.json")} <= table


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Basic {KEY}",
        KEY,
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
    ],
)
def test_every_route_but_health_needs_the_key(
    keyed: TestClient, keyed_app: FastAPI, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    checked = 0
    for method, path in every_route(keyed_app):
        if (method, path) in OPEN_ROUTES:
            continue
        response = keyed.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        assert KEY not in response.text
        checked += 1
        if (method, path) in FORM_ROUTES:
            assert response.headers["content-type"].startswith("text/html")
            continue
        if path.startswith(("/v1/files", "/v1/fine_tuning")):  # OpenAI's error body
            assert response.headers["content-type"] == "application/json"
            assert "Authorization: Bearer <key>" in response.json()["error"]["message"]
            continue
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 401 and "Authorization: Bearer <key>" in problem["detail"]
    assert checked >= 14
    assert keyed.get("/health", headers=headers).status_code == 200


def test_the_key_opens_every_route(keyed: TestClient, keyed_app: FastAPI) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for method, path in every_route(keyed_app):
        if (method, path) in FORM_ROUTES:
            response = keyed.request(method, path, data={"key": KEY}, follow_redirects=False)
        else:
            response = keyed.request(method, path, headers=auth)
        assert response.status_code != 401, (method, path)


def test_the_dashboard_cookie_opens_reads_only(keyed: TestClient, keyed_app: FastAPI) -> None:
    """The session cookie that POST /login sets is accepted on GET routes only (a page
    elsewhere cannot make the browser change anything), and a forged one on none."""
    token = session_token(KEY)
    assert KEY not in token
    for cookie, opens_reads in ((token, True), ("0" * len(token), False)):
        keyed.cookies.set(SESSION_COOKIE, cookie)
        for method, path in every_route(keyed_app):
            if (method, path) in OPEN_ROUTES | FORM_ROUTES:
                continue
            status = keyed.request(method, path).status_code
            if method == "GET" and opens_reads:
                assert status != 401, (method, path)
            else:
                assert status == 401, (method, path, cookie)
    keyed.cookies.clear()


def test_the_key_is_compared_in_constant_time(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("services.trainer.api.deps.hmac.compare_digest", spy)
    assert keyed.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert calls == [(b"nope", KEY.encode())]
    assert keyed.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert calls[-1] == (KEY.encode(), KEY.encode())


def test_the_embedded_default_binds_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CAI_TRAINER_", "CAI_GENERATOR_")):
            monkeypatch.delenv(name)
    assert trainer_spec().env["CAI_TRAINER_HOST"] == "127.0.0.1"
    assert generator_spec().env["CAI_GENERATOR_HOST"] == "127.0.0.1"
    assert TrainerSettings().host == "127.0.0.1"
    assert GeneratorSettings().host == "127.0.0.1"
    assert trainer_spec().health_url.startswith("http://127.0.0.1:")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_started_trainer_listens_on_loopback_only(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer(api_key=KEY)
    assert listening_addresses(trainer.port) == {"0100007F"}  # 127.0.0.1, nothing else


def test_no_key_reaches_any_log_line(
    start_trainer: Callable[..., TrainerService], caplog: pytest.LogCaptureFixture
) -> None:
    """A job runs with the key set; its body logs its whole environment. Neither the service
    log, the job's log, its events nor the client's log holds the key, or a wrong one sent."""
    caplog.set_level(logging.DEBUG)
    trainer = start_trainer(api_key=KEY)
    client = trainer.client()
    dataset_id = upload(client)
    env_job = submit(client, dataset_id, "env-dump")
    assert wait_state(client, env_job, "succeeded", "failed")["state"] == "succeeded"
    wrong = "wrong-token-also-secret-91ab"
    with httpx.Client(base_url=trainer.base_url, timeout=10) as anonymous:
        for path in ("/v1/jobs", "/metrics", f"/v1/jobs/{env_job}/events"):
            response = anonymous.get(path, headers={"Authorization": f"Bearer {wrong}"})
            assert response.status_code == 401

    job_log = client.get(f"/v1/jobs/{env_job}/log").text
    assert "env PATH=" in job_log  # the body did log its environment
    events = client.get(f"/v1/jobs/{env_job}/events").text
    texts = {
        "service log": trainer.log_path.read_text(errors="replace"),
        "job log": (trainer.data_dir / "jobs" / env_job / "job.log").read_text(errors="replace"),
        "events": events,
        "child plan": (trainer.data_dir / "jobs" / env_job / "child.json").read_text(),
        "client log": caplog.text,
    }
    for where, text in texts.items():
        assert KEY not in text, where
        assert wrong not in text, where


async def test_the_trainer_client_sends_the_key_and_never_shows_it() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            401,
            json={"title": "Unauthorized", "status": 401, "detail": "the API key is wrong"},
            headers={"content-type": "application/problem+json"},
        )

    async with TrainerClient(
        "http://trainer", api_key=KEY, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(TrainerAuthError) as caught:
            await client.list_jobs()
    assert seen == [f"Bearer {KEY}"]
    assert KEY not in str(caught.value)


def fake_vllm(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for `vllm`: it records the argv it was started with."""
    record = tmp_path / "argv.json"
    script = tmp_path / "vllm"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    return script, record


def test_the_generator_is_started_with_the_key_and_never_logs_it(tmp_path: Path) -> None:
    script, record = fake_vllm(tmp_path)
    env = os.environ | {
        "CAI_GENERATOR_MODEL": str(TINY_MODEL),
        "CAI_GENERATOR_DEVICE": "cpu",
        "CAI_GENERATOR_API_KEY": KEY,
        "CAI_GENERATOR_VLLM_EXECUTABLE": str(script),
    }
    started = subprocess.run(
        [sys.executable, "-m", "services.generator"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    argv = json.loads(record.read_text())
    assert argv[argv.index("--api-key") + 1] == KEY
    assert "starting:" in started.stderr and "--api-key '***'" in started.stderr
    assert KEY not in started.stderr + started.stdout

    printed = subprocess.run(
        [sys.executable, "-m", "services.generator", "--print"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--api-key '***'" in printed.stdout
    assert KEY not in printed.stdout + printed.stderr


def test_without_a_key_the_generator_gets_no_api_key_flag(tmp_path: Path) -> None:
    script, record = fake_vllm(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CAI_GENERATOR_API_KEY"} | {
        "CAI_GENERATOR_MODEL": str(TINY_MODEL),
        "CAI_GENERATOR_DEVICE": "cpu",
        "CAI_GENERATOR_VLLM_EXECUTABLE": str(script),
    }
    subprocess.run(
        [sys.executable, "-m", "services.generator"], cwd=ROOT, env=env, timeout=60, check=True
    )
    assert "--api-key" not in json.loads(record.read_text())


async def test_the_generator_client_sends_the_key_and_never_shows_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny"}]})
        return httpx.Response(401, json={"error": {"message": "Unauthorized", "code": 401}})

    async with GeneratorClient(
        "http://generator", api_key=KEY, transport=httpx.MockTransport(handler), max_retries=0
    ) as client:
        assert [card.id for card in await client.models()] == ["tiny"]
        with pytest.raises(GeneratorError) as caught:
            await client.load_adapter("a", "/adapters/a")
    assert seen == [f"Bearer {KEY}", f"Bearer {KEY}"]
    assert KEY not in str(caught.value)
    assert KEY not in caplog.text
