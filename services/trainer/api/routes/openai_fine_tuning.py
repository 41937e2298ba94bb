"""OpenAI's fine-tuning jobs API over the trainer's DPO jobs (services/trainer/openai_compat/).

client.fine_tuning.jobs.create(model="tiny", training_file=file.id, method={"type": "dpo"})
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.trainer.api.deps import Authorized, IdempotencyKey
from services.trainer.openai_compat.handler import Handler
from services.trainer.openai_compat.models import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreate,
    OpenAIError,
    Page,
)

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["openai fine-tuning"], dependencies=[Authorized]
)

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": OpenAIError} for code in (400, 404, 409)
}
After = Annotated[
    str | None, Query(max_length=256, description="The last id of the previous page.")
]


@router.post("", response_model=FineTuningJob, responses=_ERRORS)
def create_job(
    body: JobCreate,
    handler: Handler,
    idempotency_key: IdempotencyKey = None,
) -> FineTuningJob:
    return handler.create_job(body, idempotency_key)


@router.get("", response_model=Page[FineTuningJob], responses=_ERRORS)
def list_jobs(
    handler: Handler, after: After = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Page[FineTuningJob]:
    return handler.list_jobs(after, limit)


@router.get("/{job_id}", response_model=FineTuningJob, responses=_ERRORS)
def retrieve_job(job_id: str, handler: Handler) -> FineTuningJob:
    return handler.get_job(job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJob, responses=_ERRORS)
def cancel_job(job_id: str, handler: Handler) -> FineTuningJob:
    return handler.cancel_job(job_id)


@router.get("/{job_id}/events", response_model=Page[FineTuningJobEvent], responses=_ERRORS)
def list_events(
    job_id: str,
    handler: Handler,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Page[FineTuningJobEvent]:
    """Newest first, as OpenAI lists them; the SSE stream is GET /v1/jobs/{id}/events."""
    return handler.list_events(job_id, after, limit)


@router.get(
    "/{job_id}/checkpoints", response_model=Page[FineTuningJobCheckpoint], responses=_ERRORS
)
def list_checkpoints(
    job_id: str,
    handler: Handler,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Page[FineTuningJobCheckpoint]:
    return handler.list_checkpoints(job_id, after, limit)
