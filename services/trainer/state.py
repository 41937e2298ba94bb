"""What one trainer app holds: built by `create_app`, kept on `app.state.trainer`."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from services.trainer.core.config import TrainerSettings
from services.trainer.core.db import Database
from services.trainer.core.device import resolve_device
from services.trainer.datasets import DatasetLayout
from services.trainer.metrics import build_registry
from services.trainer.runner import Runner
from services.trainer.store import Store
from services.trainer.submit import JobSubmitter


@dataclass
class TrainerState:
    settings: TrainerSettings
    device: str
    db: Database
    store: Store
    datasets: DatasetLayout
    submitter: JobSubmitter
    runner: Runner
    registry: CollectorRegistry

    @classmethod
    def build(cls, settings: TrainerSettings) -> TrainerState:
        device = resolve_device(settings.device)
        db = Database(settings.db_path)
        store = Store(db)
        return cls(
            settings=settings,
            device=device,
            db=db,
            store=store,
            datasets=DatasetLayout(settings.data_dir),
            submitter=JobSubmitter(settings, store, device),
            runner=Runner(settings, store, device),
            registry=build_registry(store),
        )
