"""Where a job's files live under the data folder, and what a crash can leave behind there.

    jobs/<id>/work/        the child's working folder (checkpoints, caches)
    jobs/<id>/output/      staging: what the job writes, renamed into place on success
    jobs/<id>/job.log      the child's stdout and stderr
    adapters/<name>/       a published LoRA adapter (DPO job)
    models/<name>/         a published merged model (merge job)

A folder under adapters/ or models/ that the registry does not list is what a crash
mid-publish left (job_publish.py renames first, then registers); `remove_debris` removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from services.trainer.core.files import discard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLayout:
    data_dir: Path

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def staging(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def output(self, kind: str, name: str) -> Path:
        return self.data_dir / ("models" if kind == "merge" else "adapters") / name

    def log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def remove_debris(self, registered: Collection[str]) -> None:
        """At start, with no job running: every job's staging folder, half-deleted outputs
        (`.trash-*`) and published folders the registry does not list."""
        jobs_root = self.data_dir / "jobs"
        if jobs_root.is_dir():
            for job_dir in jobs_root.iterdir():
                discard(job_dir / "output")
        for folder in ("adapters", "models"):
            root = self.data_dir / folder
            if not root.is_dir():
                continue
            for path in root.iterdir():
                if path.name.startswith(".trash-"):
                    discard(path)
                elif path.is_dir() and path.name not in registered:
                    logger.warning("removing %s: not in the registry (a crash mid-publish)", path)
                    discard(path)
