"""What a rank of a multi-process DPO job needs to know and do (the DPO body calls these):
its place in the job, the process group, the values every rank must agree on, the DPOConfig
changes and the memory share of one rank, and gathering the trained LoRA tensors. torch and
accelerate are imported where they are used: the service itself never imports them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.trainer.jobs.training_memory import ModelShape


def world_size() -> int:
    """Processes of this job (torchrun's WORLD_SIZE); 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_process_group(device: str) -> Any:
    """Join the job's process group now (gloo on CPU, NCCL on CUDA). DPOConfig would do it
    later; the memory plan and rank-0-only model loading need it earlier. Returns the
    accelerate `PartialState` that TRL's Trainer then reuses."""
    from accelerate import PartialState

    if device == "cuda":
        return PartialState()
    return PartialState(cpu=True, backend="gloo")


def min_across_ranks(value: int | None) -> int | None:
    """The smallest `value` over all ranks (free GPU memory): every rank must choose the
    same micro-batch, or their step counts differ and the last collective never returns."""
    import torch.distributed as dist

    if value is None or not dist.is_initialized():
        return value
    values: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    known = [v for v in values if v is not None]
    return min(known) if known else None


def sharded_shape(shape: ModelShape, num_processes: int) -> ModelShape:
    """What one rank holds under FSDP full sharding, for the memory plan: 1/N of the weights
    plus two whole layers (the one running and the one FSDP prefetches). Activations are not
    sharded: each rank runs its own micro-batch through every layer."""
    if num_processes <= 1:
        return shape
    per_layer = shape.parameters // max(shape.num_layers, 1)
    held = -(-shape.parameters // num_processes) + 2 * per_layer
    return replace(shape, parameters=min(shape.parameters, held))


def distributed_overrides(
    num_processes: int, device: str, dpo_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """DPOConfig values that change when the job runs on several processes.

    - No reference pre-pass: TRL 1.16 runs it before `train` wraps the model in FSDP, i.e.
      on the unsharded model (a 32B model would have to fit one card, the very thing FSDP
      avoids; here non-zero ranks even hold `meta` weights), and caches it in a per-process
      temp folder that the other ranks cannot read. The reference forward runs in each step
      instead, with the adapter switched off (no second model in memory).
    - CPU (DDP): gloo (accelerate would pick MPI where torch has it), and no search for
      unused parameters: every LoRA weight takes part in every step's policy forward.
    """
    if num_processes <= 1:
        return {}
    overrides: dict[str, Any] = {}
    if dpo_kwargs.get("precompute_ref_log_probs"):
        overrides["precompute_ref_log_probs"] = False
    if device != "cuda":
        overrides["ddp_backend"] = "gloo"
        overrides["ddp_find_unused_parameters"] = False
    return overrides


def gather_adapter_state(model: Any, adapter_name: str, keep: bool) -> dict[str, Any]:
    """Full LoRA tensors of one adapter from an FSDP2 model, on the host.

    Under FSDP2 every parameter is a DTensor holding this rank's shard; `full_tensor()` is
    an all-gather, so every rank must call this (same order: the same module tree). Only the
    adapter's tensors are gathered (accelerate's `get_state_dict` would gather the whole
    base model onto rank 0's host first: 64 GB at 32B). `keep=False` ranks return {}.
    """
    from torch.distributed.tensor import DTensor

    marker = f".{adapter_name}."
    state: dict[str, Any] = {}
    for name, param in model.named_parameters():
        if "lora_" not in name or marker not in name:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param
        if keep:
            state[name] = full.detach().to("cpu").clone()
    return state
