"""The trainer's records as OpenAI objects: a dataset as a file, a DPO job as a
fine-tuning job, a job event as a fine-tuning event, the adapter as the job's checkpoint.

Events map as follows: a state change is a `message` event (level `error` when the job
failed, with its reason); a progress event is a `metrics` event whose `data` holds `step`,
`total_steps`, `train_loss` and every metric the job logged; a log line is a `message`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from protocol.adapters import AdapterRecord
from protocol.datasets import DatasetRecord
from protocol.jobs import DpoJobSpec, JobEvent, JobRecord, JobState
from services.trainer.openai_compat.hyperparams import hyperparameters, top_level
from services.trainer.openai_compat.models import (
    CheckpointMetrics,
    DpoMethodOut,
    ErrorInfo,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    MethodOut,
)
from services.trainer.store import utcnow


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def file_object(record: DatasetRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=unix(record.created_at),
        filename=record.name or f"{record.id}.jsonl",
    )


def fine_tuned_model(job: JobRecord) -> str | None:
    """The adapter's name once the job succeeded (its output is registered then)."""
    if job.state != JobState.succeeded:
        return None
    return str(job.result.get("output_name") or job.spec.output_name)


def job_object(job: JobRecord) -> FineTuningJob:
    spec = job.spec
    assert isinstance(spec, DpoJobSpec), "only DPO jobs are fine-tuning jobs"
    values = hyperparameters(spec)
    error = None
    if job.state == JobState.failed:
        error = ErrorInfo(code="job_failed", message=job.error or "the job failed")
    estimated = None
    eta = job.progress.eta_seconds
    if job.state == JobState.running and eta is not None:
        estimated = unix(utcnow() + timedelta(seconds=eta))
    tokens = job.result.get("train_tokens")
    return FineTuningJob(
        id=job.id,
        created_at=unix(job.created_at),
        error=error,
        fine_tuned_model=fine_tuned_model(job),
        finished_at=unix(job.finished_at) if job.finished_at else None,
        hyperparameters=top_level(values),
        model=spec.base_model,
        seed=spec.seed,
        status=job.state.value,
        trained_tokens=tokens if isinstance(tokens, int) else None,
        training_file=spec.dataset_id,
        validation_file=spec.eval_dataset_id,
        estimated_finish=estimated,
        method=MethodOut(dpo=DpoMethodOut(hyperparameters=values)),
    )


def event_id(job_id: str, seq: int) -> str:
    return f"{job_id}-{seq}"


def event_seq(job_id: str, event: str) -> int | None:
    """The seq of an event id of this job (None when it is not one)."""
    head, _, tail = event.rpartition("-")
    if head != job_id or not (tail.isascii() and tail.isdigit()) or len(tail) > 18:
        return None
    return int(tail)


Level = Literal["info", "warn", "error"]


def _state_message(event: JobEvent) -> tuple[Level, str]:
    state = event.state
    if state == JobState.failed:
        return "error", f"Job failed: {event.message or 'no reason given'}"
    if state == JobState.cancelled:
        return "info", f"Job cancelled{f': {event.message}' if event.message else ''}"
    return "info", f"Job {state.value if state else 'changed state'}"


def event_object(event: JobEvent) -> FineTuningJobEvent:
    level: Level = "info"
    kind: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None
    message = event.message or ""
    if event.type == "state":
        level, message = _state_message(event)
    elif event.type == "progress" and event.progress is not None:
        progress = event.progress
        loss = progress.metrics.get("loss")
        kind = "metrics"
        data = {"step": progress.step, "total_steps": progress.total_steps, "train_loss": loss}
        data |= progress.metrics
        shown = f", train loss={loss:.4f}" if loss is not None else ""
        message = f"Step {progress.step}/{progress.total_steps or '?'}{shown}"
    return FineTuningJobEvent(
        id=event_id(event.job_id, event.seq),
        created_at=unix(event.time),
        level=level,
        message=message,
        type=kind,
        data=data,
    )


def checkpoint_id(job_id: str) -> str:
    return f"ftckpt-{job_id}"


def checkpoint_object(job: JobRecord, adapter: AdapterRecord) -> FineTuningJobCheckpoint:
    """The job's one checkpoint: its final adapter (jobs keep no intermediate ones)."""
    step = job.progress.total_steps or job.progress.step
    return FineTuningJobCheckpoint(
        id=checkpoint_id(job.id),
        created_at=unix(adapter.created_at),
        fine_tuned_model_checkpoint=adapter.name,
        fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics(
            step=step,
            train_loss=adapter.metrics.get("loss"),
            valid_loss=adapter.metrics.get("eval/loss"),
        ),
        step_number=step,
    )
