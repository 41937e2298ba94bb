"""The DPO job's cheap checks, before anything heavy loads: paths, device, quantisation, loss
types, the parent adapter's shape and the process count. A bad spec fails here in seconds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.jobs import DpoJobSpec
from services.trainer.distributed import check_supported, world_size
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.training_config import check_parent_compatible, lora_config, loss_types
from services.trainer.jobs.training_device import (
    bitsandbytes_importable,
    check_quantization,
    resolve_device,
    training_dtype,
)


class JobInputError(ValueError):
    """A path the runner should have provided is missing."""


@dataclass(frozen=True)
class JobInputs:
    """What the cheap checks established, before anything heavy loads."""

    device: str
    dtype: str
    parent: Path | None
    parent_config: dict[str, Any] | None
    peft_config: Any
    rank: int
    processes: int


def read_adapter_config(path: Path) -> dict[str, Any]:
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise JobInputError(f"parent adapter {path} has no adapter_config.json")
    data: dict[str, Any] = json.loads(config_file.read_text())
    return data


def check_inputs(spec: DpoJobSpec, ctx: JobContext, cuda_available: bool) -> JobInputs:
    """Everything that can fail without loading a model, so a bad spec fails in seconds."""
    if ctx.train_path is None:
        raise JobInputError("the DPO job has no training dataset path")
    device = resolve_device(ctx.device, cuda_available)
    check_quantization(spec.load_in_4bit, device, bitsandbytes_importable())
    loss_types(spec.dpo.loss_type)
    parent = ctx.parent_adapter_path
    parent_config = read_adapter_config(parent) if parent is not None else None
    if parent_config is not None:
        overridden = check_parent_compatible(spec, parent_config)
        if overridden:
            ctx.log.warning(
                "iterative DPO keeps the parent's LoRA shape: %s", ", ".join(overridden)
            )
    processes = world_size()
    check_supported(processes, spec.load_in_4bit)
    return JobInputs(
        device=device,
        dtype=training_dtype(device),
        parent=parent,
        parent_config=parent_config,
        # With a parent, TRL copies its adapter as the frozen reference: no new LoRA.
        peft_config=lora_config(spec.lora) if parent is None else None,
        rank=int(parent_config["r"]) if parent_config is not None else spec.lora.r,
        processes=processes,
    )
