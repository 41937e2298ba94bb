"""Publishing what a succeeded job wrote: hash the staging folder's files, rename it to
`adapters/<name>` (or `models/<name>`), then register it and mark the job succeeded in one
SQLite transaction. A crash between the rename and the commit leaves a folder the registry
does not list, removed at the next start (job_layout.remove_debris).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.adapters import AdapterRecord
from protocol.jobs import DpoJobSpec, JobRecord, JobState, MergeJobSpec
from services.trainer.core.files import discard, publish_folder, sha256_tree
from services.trainer.job_layout import JobLayout
from services.trainer.store import Store, utcnow
from services.trainer.stored import finite, finite_metrics


def publish(store: Store, layout: JobLayout, job: JobRecord, result: dict[str, Any]) -> None:
    spec = job.spec
    staging = layout.staging(job.id)
    files = sha256_tree(staging)
    if not files:
        discard(staging)
        store.finish_job(
            job.id, JobState.failed, error="the job body wrote nothing into output_dir"
        )
        return
    final = layout.output(spec.kind, spec.output_name)
    record = output_record(store, spec, job.id, final, files, result)
    publish_folder(staging, final)
    stored = dict(result) | {"output_name": spec.output_name, "path": str(final)}
    try:
        ok = store.finish_job(job.id, JobState.succeeded, result=stored, adapter=record)
    except Exception:
        discard(final)
        raise
    if not ok:  # ended meanwhile (cancelled at the last moment): nothing may stay listed
        discard(final)


def output_record(
    store: Store,
    spec: DpoJobSpec | MergeJobSpec,
    job_id: str,
    final: Path,
    files: dict[str, str],
    result: dict[str, Any],
) -> AdapterRecord:
    """The registry record of a job's output: a LoRA adapter, or a merged model."""
    # Finite numbers only: a NaN loss must not make the registry row unreadable.
    metrics = finite_metrics(result.get("metrics") or {})
    config = finite(result.get("config") or {})
    if isinstance(spec, DpoJobSpec):
        return AdapterRecord(
            name=spec.output_name,
            kind="lora",
            path=str(final),
            base_model=spec.base_model,
            parent_adapter=spec.parent_adapter,
            dataset_id=spec.dataset_id,
            job_id=job_id,
            rank=result.get("rank", spec.lora.r),
            metrics=metrics,
            files=files,
            config=config,
            created_at=utcnow(),
        )
    adapter = store.get_adapter(spec.adapter)
    return AdapterRecord(
        name=spec.output_name,
        kind="merged",
        path=str(final),
        base_model=spec.base_model or (adapter.base_model if adapter else ""),
        parent_adapter=spec.adapter,
        dataset_id=adapter.dataset_id if adapter else None,
        job_id=job_id,
        rank=None,
        metrics=metrics,
        files=files,
        config=config,
        created_at=utcnow(),
    )
