"""Typed async client of the trainer service (services/trainer).

async with TrainerClient("http://127.0.0.1:8100", api_key=key) as trainer:
    dataset = await trainer.upload_dataset(Path("runs/x/train.jsonl"))
    job = await trainer.submit_job(DpoJobSpec(base_model="tiny", dataset_id=dataset.id,
                                              output_name="stage1"))
    async for event in trainer.events(job.id):
        ...
    job = await trainer.wait_for_job(job.id)   # raises JobNotSucceeded unless succeeded
    adapter = await trainer.get_adapter("stage1")
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cai.http import BearerHttpClient, Sleep
from cai.retry import backoff_delay
from cai.trainer.errors import (
    JobNotSucceeded,
    TrainerConnectionError,
    TrainerError,
    TrainerResponseError,
    TrainerStatusError,
    TrainerTimeout,
    status_error_class,
)
from cai.trainer.sse import iter_sse
from protocol.adapters import AdapterRecord
from protocol.datasets import DatasetRecord
from protocol.errors import Problem
from protocol.jobs import DpoJobSpec, JobEvent, JobList, JobRecord, JobSpec, JobState, MergeJobSpec
from protocol.trainer_api import AdapterList, TrainerHealth

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8100"
UPLOAD_CHUNK = 1 << 20
M = TypeVar("M", bound=BaseModel)
_SPEC: TypeAdapter[DpoJobSpec | MergeJobSpec] = TypeAdapter(JobSpec)


class TrainerClient(BearerHttpClient):
    """Typed async client of one trainer.

    Args:
        base_url: e.g. `http://127.0.0.1:8100` (no `/v1`).
        api_key: sent as `Authorization: Bearer <key>` (the trainer's CAI_TRAINER_API_KEY).
        timeout: seconds for one request; event streams have no read timeout.
        max_retries: extra attempts on connection errors and 5xx for requests that are safe
            to repeat (reads, uploads, idempotent submits, cancels).
        backoff: first wait in seconds; doubles each retry (capped at 30 s), with jitter.
        transport: an `httpx.AsyncBaseTransport` (tests pass `httpx.MockTransport` or
            `httpx.ASGITransport(app)`).
        sleep: what waits between retries (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            transport=transport,
            sleep=sleep,
        )

    # ---- service ------------------------------------------------------------------------

    async def health(self) -> TrainerHealth:
        return await self._model(TrainerHealth, "GET", "/health")

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text

    # ---- datasets -----------------------------------------------------------------------

    async def upload_dataset(
        self, source: Path | bytes, *, name: str | None = None
    ) -> DatasetRecord:
        """Upload JSONL (a file, streamed from disk, or bytes). Same bytes, same id."""
        params = {"name": name} if name else None

        def body() -> Any:
            if isinstance(source, bytes):
                return source
            return _file_chunks(source)

        return await self._model(
            DatasetRecord,
            "POST",
            "/v1/datasets",
            content=body,
            params=params,
            headers={"Content-Type": "application/jsonl"},
        )

    async def get_dataset(self, dataset_id: str) -> DatasetRecord:
        return await self._model(DatasetRecord, "GET", f"/v1/datasets/{dataset_id}")

    # ---- jobs ---------------------------------------------------------------------------

    async def submit_job(
        self,
        spec: DpoJobSpec | MergeJobSpec | dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        """Submit a job. A key is generated when none is given, so the client's own retries
        never create a second job; pass your own to make retries across runs safe too."""
        if isinstance(spec, dict):
            spec = _SPEC.validate_python(spec)
        key = idempotency_key or str(uuid.uuid4())
        return await self._model(
            JobRecord,
            "POST",
            "/v1/jobs",
            json=spec.model_dump(mode="json"),
            headers={"Idempotency-Key": key},
        )

    async def get_job(self, job_id: str) -> JobRecord:
        return await self._model(JobRecord, "GET", f"/v1/jobs/{job_id}")

    async def list_jobs(self, state: JobState | str | None = None) -> list[JobRecord]:
        params = {"state": JobState(state).value} if state is not None else None
        return (await self._model(JobList, "GET", "/v1/jobs", params=params)).jobs

    async def cancel_job(self, job_id: str) -> JobRecord:
        return await self._model(JobRecord, "POST", f"/v1/jobs/{job_id}/cancel")

    async def job_log(self, job_id: str, tail: int = 200) -> str:
        response = await self._request("GET", f"/v1/jobs/{job_id}/log", params={"tail": tail})
        return response.text

    async def events(self, job_id: str, *, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events from `after` on, until its terminal state. A dropped stream is
        reopened with Last-Event-ID: no event is lost or repeated."""
        last = after
        attempt = 0
        while True:
            try:
                async for event in self._stream_events(job_id, last):
                    attempt = 0
                    last = event.seq
                    yield event
                    if event.type == "state" and event.state is not None and event.state.terminal:
                        return
                job = await self.get_job(job_id)
                if job.state.terminal:
                    return  # resumed after the terminal event
            except TrainerConnectionError:
                if attempt >= self.max_retries:
                    raise
                await self._sleep(self._delay(attempt))
                attempt += 1

    async def wait_for_job(
        self, job_id: str, on_event: Callable[[JobEvent], None] | None = None
    ) -> JobRecord:
        """Follow the job to its end; return it if it succeeded, else raise JobNotSucceeded."""
        async for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        job = await self.get_job(job_id)
        if job.state != JobState.succeeded:
            raise JobNotSucceeded(job)
        return job

    async def _stream_events(self, job_id: str, after: int) -> AsyncIterator[JobEvent]:
        path = f"/v1/jobs/{job_id}/events"
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        timeout = httpx.Timeout(None, connect=10.0)
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=timeout) as resp:
                if not resp.is_success:
                    await resp.aread()
                    raise _status_error(resp, "GET", f"{self.base_url}{path}")
                async for message in iter_sse(resp.aiter_lines()):
                    try:
                        yield JobEvent.model_validate_json(message.data)
                    except ValidationError as exc:
                        raise TrainerResponseError(
                            f"unreadable event from {path}: {message.data[:200]!r}"
                        ) from exc
        except httpx.TransportError as exc:
            raise self._transport_error(exc, "GET", path) from exc

    # ---- adapters -----------------------------------------------------------------------

    async def list_adapters(self, kind: str | None = None) -> list[AdapterRecord]:
        params = {"kind": kind} if kind else None
        return (await self._model(AdapterList, "GET", "/v1/adapters", params=params)).adapters

    async def get_adapter(self, name: str) -> AdapterRecord:
        return await self._model(AdapterRecord, "GET", f"/v1/adapters/{name}")

    # ---- plumbing -----------------------------------------------------------------------

    async def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = await self._request(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise TrainerResponseError(
                f"{method} {self.base_url}{path} answered {response.status_code} with a body "
                f"that is not a {model.__name__}: {response.text[:200]!r}"
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        # Every call of this client is safe to repeat: reads, content-addressed uploads,
        # submits with an Idempotency-Key, cancels (a second one answers 409, not harm).
        attempts = 1 + self.max_retries
        for attempt in range(attempts):
            try:
                if content is not None:
                    kwargs["content"] = content()
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error: TrainerError = self._transport_error(exc, method, path)
            else:
                if response.is_success:
                    return response
                error = _status_error(response, method, f"{self.base_url}{path}")
                if response.status_code < 500:
                    raise error
            if attempt == attempts - 1:
                raise error
            delay = self._delay(attempt)
            logger.warning("%s %s failed (%s); retry in %.2fs", method, path, error, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable")

    def _transport_error(self, exc: httpx.TransportError, method: str, path: str) -> TrainerError:
        url = f"{self.base_url}{path}"
        if isinstance(exc, httpx.TimeoutException):
            return TrainerTimeout(
                f"the trainer at {self.base_url} did not answer {method} {path} in time", url=url
            )
        return TrainerConnectionError(
            f"cannot reach the trainer at {self.base_url} ({method} {path}: "
            f"{type(exc).__name__}: {exc}); is it running? Start it with `make serve` or give "
            "the right URL (CAI_TRAINER_URL)",
            url=url,
        )

    def _delay(self, attempt: int) -> float:
        return backoff_delay(self.backoff, attempt)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
            yield chunk


def _status_error(response: httpx.Response, method: str, url: str) -> TrainerStatusError:
    problem: Problem | None = None
    try:
        problem = Problem.model_validate_json(response.content)
        detail = problem.detail or problem.title
    except ValidationError:
        detail = response.text.strip()[:500] or response.reason_phrase
    cls = status_error_class(response.status_code)
    message = f"{method} {url} failed with {response.status_code}: {detail}"
    return cls(message, url=url, status_code=response.status_code, detail=detail, problem=problem)
