"""Jobs: submit, list, show, follow (server-sent events), read the log, cancel.

curl -X POST -H 'Idempotency-Key: 7f1c...' -d @job.json $URL/v1/jobs
curl -N $URL/v1/jobs/<id>/events
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from protocol.errors import Problem
from protocol.jobs import JobList, JobRecord, JobSpec, JobState
from services.trainer.api.deps import Authorized, IdempotencyKey, State
from services.trainer.core.errors import BadRequest, NotFound
from services.trainer.state import TrainerState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Authorized])

EVENT_POLL_S = 0.25
# Event seqs are SQLite INTEGERs: a larger `after` / Last-Event-ID cannot be bound to a query.
MAX_SEQ = 2**63 - 1
KEEPALIVE_S = 15.0
_PROBLEMS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem} for code in (400, 401, 404, 409, 422)
}


def _job_or_404(state: TrainerState, job_id: str) -> JobRecord:
    job = state.store.get_job(job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id[:64]!r}: see GET /v1/jobs")
    return job


@router.post(
    "",
    response_model=JobRecord,
    status_code=202,
    responses={
        200: {"model": JobRecord, "description": "Replay of an Idempotency-Key."},
        **_PROBLEMS,
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(description="A DPO or merge job, told apart by `kind`.")],
    state: State,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRecord:
    submitted = state.submitter.submit(spec, idempotency_key)
    if submitted.created:
        state.runner.notify()
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return submitted.job


@router.get("", response_model=JobList)
def list_jobs(
    state: State,
    job_state: Annotated[JobState | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> JobList:
    return JobList(jobs=state.store.list_jobs(job_state, limit))


@router.get("/{job_id}", response_model=JobRecord, responses={404: {"model": Problem}})
def get_job(job_id: str, state: State) -> JobRecord:
    return _job_or_404(state, job_id)


@router.post("/{job_id}/cancel", response_model=JobRecord, responses=_PROBLEMS)
def cancel_job(job_id: str, state: State) -> JobRecord:
    """Queued: cancelled at once. Running: the child is stopped; answers once it is."""
    return state.runner.cancel(job_id)


@router.get(
    "/{job_id}/log",
    response_class=PlainTextResponse,
    responses={404: {"model": Problem}},
)
def job_log(
    job_id: str, state: State, tail: Annotated[int, Query(ge=1, le=100000)] = 200
) -> PlainTextResponse:
    """The last `tail` lines of the job's log (its child process's output)."""
    _job_or_404(state, job_id)
    path = state.runner.layout.log(job_id)
    lines = path.read_text(errors="replace").splitlines()[-tail:] if path.exists() else []
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))


def _sse(seq: int, kind: str, data: str) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JobEvent per event."},
        404: {"model": Problem},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    state: State,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Resume after this seq.")
    ] = None,
) -> StreamingResponse:
    """State changes and progress as server-sent events (`event:` is the JobEvent type,
    `id:` its seq). Ends after the terminal state; resume with Last-Event-ID."""
    await anyio.to_thread.run_sync(_job_or_404, state, job_id)
    start = after or 0
    if last_event_id is not None:
        text = last_event_id.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
            raise BadRequest("Last-Event-ID must be the integer `id` of the last event received")
        start = int(text)

    async def stream() -> AsyncIterator[str]:
        seen = start
        idle = 0.0
        while True:
            events = await anyio.to_thread.run_sync(state.store.events_after, job_id, seen)
            for event in events:
                seen = event.seq
                yield _sse(event.seq, event.type, event.model_dump_json())
                if event.type == "state" and event.state is not None and event.state.terminal:
                    return
            if events:
                idle = 0.0
                continue
            job = await anyio.to_thread.run_sync(state.store.get_job, job_id)
            if job is None or job.state.terminal:
                # Ended between the two reads: send what came meanwhile (it holds the
                # terminal event); resumed after the terminal event: nothing more comes.
                late = await anyio.to_thread.run_sync(state.store.events_after, job_id, seen)
                for event in late:
                    yield _sse(event.seq, event.type, event.model_dump_json())
                return
            if await request.is_disconnected():
                return
            idle += EVENT_POLL_S
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            await anyio.sleep(EVENT_POLL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
