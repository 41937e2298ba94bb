"""The trainer client: typed errors from problem bodies, retries, event streams.
Against httpx.MockTransport, and against the real app in-process (httpx.ASGITransport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cai.trainer import (
    JobNotSucceeded,
    TrainerAuthError,
    TrainerBadRequest,
    TrainerClient,
    TrainerConflict,
    TrainerConnectionError,
    TrainerNotFound,
    TrainerResponseError,
    TrainerServerError,
    iter_sse,
)
from protocol.jobs import DpoJobSpec, JobState
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl


async def no_sleep(_: float) -> None:
    return None


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"title": "x", "status": status, "detail": detail} | extra
    return httpx.Response(
        status, content=json.dumps(body), headers={"content-type": "application/problem+json"}
    )


def mock_client(handler: Any, **kwargs: Any) -> TrainerClient:
    return TrainerClient(
        "http://trainer", transport=httpx.MockTransport(handler), sleep=no_sleep, **kwargs
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, TrainerBadRequest),
        (422, TrainerBadRequest),
        (401, TrainerAuthError),
        (404, TrainerNotFound),
        (409, TrainerConflict),
        (500, TrainerServerError),
    ],
)
async def test_problem_bodies_become_typed_errors_with_the_servers_detail(
    status: int, error: type[Exception]
) -> None:
    async with mock_client(lambda request: problem(status, "fix the thing", field="x")) as c:
        with pytest.raises(error) as caught:
            await c.get_job("job-1")
    assert caught.value.detail == "fix the thing"  # type: ignore[attr-defined]
    assert caught.value.problem.field == "x"  # type: ignore[attr-defined]
    assert "fix the thing" in str(caught.value)


async def test_server_errors_are_retried_then_succeed() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return problem(503, "busy")
        return httpx.Response(200, json={"jobs": []})

    async with mock_client(handler) as c:
        assert await c.list_jobs() == []
    assert len(calls) == 3


async def test_client_errors_are_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return problem(422, "bad")

    async with mock_client(handler) as c:
        with pytest.raises(TrainerBadRequest):
            await c.list_jobs()
    assert len(calls) == 1


async def test_connection_errors_name_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with mock_client(handler, max_retries=1) as c:
        with pytest.raises(TrainerConnectionError, match=r"http://trainer.*CAI_TRAINER_URL"):
            await c.health()


async def test_submit_always_sends_an_idempotency_key_and_keeps_it_on_retries() -> None:
    keys = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.ReadError("connection reset")
        return problem(409, "taken")

    async with mock_client(handler) as c:
        with pytest.raises(TrainerConflict):
            await c.submit_job({"kind": "merge", "adapter": "a", "output_name": "m"})
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]


async def test_api_key_is_sent_as_bearer() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"adapters": []})

    async with mock_client(handler, api_key="k") as c:
        await c.list_adapters()
    assert seen == ["Bearer k"]


async def _lines(text: str) -> AsyncIterator[str]:
    for line in text.split("\n"):
        yield line


async def test_sse_reader_handles_ids_events_comments_and_multiline_data() -> None:
    text = ": keep-alive\n\nid: 3\nevent: state\ndata: a\ndata: b\n\nid: 4\ndata: c\n\n"
    messages = [m async for m in iter_sse(_lines(text))]
    assert [(m.id, m.event, m.data) for m in messages] == [
        ("3", "state", "a\nb"),
        ("4", "message", "c"),
    ]


def _event(seq: int, kind: str, **fields: Any) -> str:
    body = {"job_id": "j", "seq": seq, "type": kind, "time": "2026-01-01T00:00:00Z"} | fields
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(body)}\n\n"


async def test_events_resume_with_last_event_id_after_a_dropped_stream() -> None:
    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("Last-Event-ID"))
        if len(asked) == 1:
            body = _event(1, "state", state="running") + _event(2, "progress", progress={"step": 1})
            return httpx.Response(200, content=body + "id: 3\ndata: {trunc", headers={})
        return httpx.Response(200, content=_event(3, "state", state="succeeded"))

    async with mock_client(handler) as c:
        with pytest.raises(TrainerResponseError, match="unreadable event"):
            [e async for e in c.events("j")]
    assert asked == ["0"]

    drops = []

    def flaky(request: httpx.Request) -> httpx.Response:
        drops.append(request.headers.get("Last-Event-ID"))
        if len(drops) == 1:
            return httpx.Response(200, stream=_DropAfter(_event(1, "state", state="running")))
        return httpx.Response(200, content=_event(2, "state", state="succeeded"))

    async with mock_client(flaky) as c:
        events = [e async for e in c.events("j")]
    assert [e.seq for e in events] == [1, 2]
    assert drops == ["0", "1"]


class _DropAfter(httpx.AsyncByteStream):
    def __init__(self, text: str) -> None:
        self.text = text

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.text.encode()
        raise httpx.ReadError("connection dropped")


# ---- against the real app, in process -------------------------------------------------


@pytest.fixture
def running_app(settings: TrainerSettings) -> Iterator[FastAPI]:
    app = create_app(settings)
    app.state.trainer.runner.start()
    try:
        yield app
    finally:
        app.state.trainer.runner.stop()


def asgi_client(app: FastAPI) -> TrainerClient:
    return TrainerClient("http://trainer", transport=httpx.ASGITransport(app=app))


async def test_upload_submit_wait_and_read_the_adapter(running_app: FastAPI, tmp_path: Any) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(pairs_jsonl(6))
    async with asgi_client(running_app) as c:
        dataset = await c.upload_dataset(path, name="pairs")
        assert dataset.rows == 6 and dataset.name == "pairs"
        assert (await c.upload_dataset(pairs_jsonl(6))).id == dataset.id
        spec = DpoJobSpec(base_model="tiny", dataset_id=dataset.id, output_name="ok-client")
        job = await c.submit_job(spec, idempotency_key="client-1")
        assert (await c.submit_job(spec, idempotency_key="client-1")).id == job.id
        seen: list[str] = []
        done = await c.wait_for_job(job.id, on_event=lambda e: seen.append(e.type))
        assert done.state == JobState.succeeded and "progress" in seen
        adapter = await c.get_adapter("ok-client")
        assert adapter.job_id == job.id and adapter.files
        assert [a.name for a in await c.list_adapters()] == ["ok-client"]
        assert "fake body" in await c.job_log(job.id)
        assert "cai_trainer_jobs" in await c.metrics()


async def test_wait_for_a_failed_job_raises_with_the_reason(running_app: FastAPI) -> None:
    async with asgi_client(running_app) as c:
        dataset = await c.upload_dataset(pairs_jsonl())
        job = await c.submit_job(
            DpoJobSpec(base_model="tiny", dataset_id=dataset.id, output_name="fail-x")
        )
        with pytest.raises(JobNotSucceeded, match="failed on purpose"):
            await c.wait_for_job(job.id)


async def test_bad_upload_raises_bad_request_naming_the_line(running_app: FastAPI) -> None:
    async with asgi_client(running_app) as c:
        with pytest.raises(TrainerBadRequest, match="line 1") as caught:
            await c.upload_dataset(b'{"prompt": "p", "chosen": "a"}\n')
    assert caught.value.problem is not None and caught.value.problem.status == 422
