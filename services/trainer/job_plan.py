"""What a job's child process is told (`jobs/<id>/child.json`): the job body to import, the
spec, and every name of the spec resolved to a path (base model, datasets, parent adapter),
so the child needs neither the database nor the settings (jobs/context.py).
"""

from __future__ import annotations

import os
from typing import Any

from protocol.jobs import DpoJobSpec, JobRecord
from services.trainer.core.config import TrainerSettings
from services.trainer.datasets import DatasetLayout
from services.trainer.job_layout import JobLayout
from services.trainer.models import resolve_base_model
from services.trainer.store import Store


def plan_child(
    job: JobRecord, settings: TrainerSettings, store: Store, device: str
) -> dict[str, Any]:
    """The child's plan; raises when a name no longer resolves (the job cannot start)."""
    spec = job.spec
    datasets = DatasetLayout(settings.data_dir)
    layout = JobLayout(settings.data_dir)
    job_dir = layout.job_dir(job.id)
    context: dict[str, Any] = {
        "work_dir": str(job_dir / "work"),
        "output_dir": str(layout.staging(job.id)),
        "device": device,
        "converted_models_dir": str(settings.data_dir / "models"),
        "extra": {},
    }
    if isinstance(spec, DpoJobSpec):
        base = resolve_base_model(spec.base_model, settings, store)
        context["base_model_path"] = base.path
        context["train_path"] = str(datasets.path(spec.dataset_id))
        if spec.eval_dataset_id:
            context["eval_path"] = str(datasets.path(spec.eval_dataset_id))
        if spec.parent_adapter:
            parent = store.get_adapter(spec.parent_adapter)
            if parent is None:
                raise RuntimeError(f"parent adapter {spec.parent_adapter!r} is gone")
            context["parent_adapter_path"] = parent.path
    else:
        adapter = store.get_adapter(spec.adapter)
        if adapter is None:
            raise RuntimeError(f"adapter {spec.adapter!r} is gone")
        base = resolve_base_model(spec.base_model or adapter.base_model, settings, store)
        context["base_model_path"] = base.path
        context["parent_adapter_path"] = adapter.path
    return {
        "job_id": job.id,
        "kind": spec.kind,
        "body": settings.job_bodies[spec.kind],
        "spec": spec.model_dump(mode="json"),
        "context": context,
        "parent_pid": os.getpid(),
    }
