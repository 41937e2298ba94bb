"""What a job body gets from the runner, in the job's child process.

The runner (services/trainer/runner.py) resolves names to paths, creates the folders and
handles the atomic move of `output_dir` into the registry after the body returns. A body
(services/trainer/jobs/dpo.py, merge.py) only reads its inputs, writes into `output_dir`,
reports progress through `emit` and returns its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.jobs import JobProgress


@dataclass(frozen=True)
class JobContext:
    job_id: str
    work_dir: Path
    """Scratch space for this job (checkpoints, caches); removed or kept by the runner."""
    output_dir: Path
    """Empty staging folder: write the adapter or merged model here and nothing else."""
    base_model_path: str
    """Resolved base model: a local folder (or a hub id where downloads are allowed)."""
    train_path: Path | None = None
    """DPO: the training JSONL (validated rows of prompt/chosen/rejected)."""
    eval_path: Path | None = None
    """DPO: the held-out JSONL, if the spec names one."""
    parent_adapter_path: Path | None = None
    """DPO: the adapter to continue from (it becomes the reference). Merge: the adapter to merge."""
    device: str = "cpu"
    """`cuda` or `cpu`, decided by the runner from the machine."""
    emit: Callable[[JobProgress], None] = field(default=lambda progress: None)
    """Report progress (step/total/metrics/ETA); cheap, call it on every logging step."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("services.trainer.job"))
    extra: dict[str, Any] = field(default_factory=dict)


JobBody = Callable[[Any, JobContext], dict[str, Any]]
"""`body(spec, ctx) -> result`: result holds `metrics` (final), `config` (effective TRL and
PEFT configs as plain dicts), and for DPO `rank`. Raise an exception to fail the job: its
message becomes the job's `error`."""
