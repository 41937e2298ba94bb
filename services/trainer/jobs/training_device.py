"""Device, dtype and memory decisions for a DPO job: small pure functions, each with a reason.

Every function here takes plain numbers (no GPU needed), so tests/unit/test_training_config.py
checks the decisions with made-up memory figures. `probe_free_gpu_bytes` and `model_shape`
are the two that look at the machine or the model; the job (dpo.py) calls them once and
passes the numbers on.

The activation model is calibrated on measurements at the Qwen2.5-7B shape on one H100
(/work/shared/notes/trl-peft.md: batch 8, 2 x 512 tokens a pair, no checkpointing, precomputed
reference log-probs: 58 GB peak with 15 GB of bf16 weights, i.e. ~5.2 MB of activations a token).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

GIB = 1024**3

# Seven adapted projections a decoder layer (q, k, v, o, gate, up, down).
_PROJECTIONS_PER_LAYER = 7
# Bytes a trainable LoRA parameter costs: fp32 weight + fp32 grad + two fp32 Adam moments.
_TRAINABLE_STATE_BYTES = 16
# Activations saved for backward a token and a layer, in elements: 10 hidden-sized tensors
# (norm inputs/outputs, q/k/v/o, residuals; RMSNorm's fp32 upcast) and 3 intermediate-sized
# ones (gate, up, SwiGLU product). Fitted to the H100 measurement above (5.2 MB/token at 7B).
_ACT_HIDDEN_TENSORS = 10
_ACT_INTERMEDIATE_TENSORS = 3
# What the CUDA context, cuBLAS workspaces, the chunked LM head and the allocator's
# fragmentation take besides weights and activations.
_FIXED_OVERHEAD_BYTES = int(1.5 * GIB)
# Share of the free memory a plan may use: the rest absorbs estimate error and length outliers.
_MEMORY_SHARE = 0.88
# Above this many pairs a micro-batch, a bigger one buys no GPU utilisation and only
# shrinks the number of optimiser steps an epoch has.
MAX_AUTO_MICRO_BATCH = 16
CPU_MICRO_BATCH = 2


class DeviceUnsupportedError(ValueError):
    """The job asks for something this device cannot do (4-bit loading on CPU)."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs to know about a causal LM."""

    parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any, parameters: int) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        return cls(
            parameters=parameters,
            hidden_size=int(text.hidden_size),
            intermediate_size=int(text.intermediate_size),
            num_layers=int(text.num_hidden_layers),
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
        )


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int
    gradient_checkpointing: bool
    precompute_ref_batch_size: int
    reason: str
    free_bytes: int | None = None
    estimated_peak_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(requested: str, cuda_available: bool) -> str:
    """`cuda` only where a GPU is visible: the runner's choice, checked against the machine."""
    if requested.startswith("cuda") and not cuda_available:
        raise DeviceUnsupportedError(
            f"the job was given device {requested!r} but no CUDA device is visible; "
            "run it on a GPU machine or with device `cpu`"
        )
    return "cuda" if requested.startswith("cuda") else "cpu"


def training_dtype(device: str) -> str:
    """bf16 on GPU (tensor cores, half the memory, no loss scaling); fp32 on CPU, where bf16
    matmuls are slow on most CPUs and numerically noisier for a tiny model's small updates."""
    return "bfloat16" if device == "cuda" else "float32"


def check_quantization(load_in_4bit: bool, device: str, bitsandbytes_available: bool) -> None:
    """4-bit (QLoRA) loading needs bitsandbytes' CUDA kernels."""
    if not load_in_4bit:
        return
    if device != "cuda":
        raise DeviceUnsupportedError(
            "load_in_4bit needs a CUDA GPU (bitsandbytes); this job runs on CPU: "
            "set load_in_4bit to false"
        )
    if not bitsandbytes_available:
        raise DeviceUnsupportedError(
            "load_in_4bit needs the `bitsandbytes` package in the trainer's environment: "
            "install it or set load_in_4bit to false"
        )


def use_liger_kernel(device: str, liger_importable: bool) -> bool:
    """Liger's fused RMSNorm/SwiGLU/RoPE Triton kernels: ~15% faster and less activation
    memory at the 7B shape (notes/trl-peft.md). Triton kernels exist only on CUDA. TRL 1.16
    applies only the layer kernels (its own fused LM head replaces Liger's loss), so they
    work with precomputed reference log-probs."""
    return device == "cuda" and liger_importable


def liger_importable() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def bitsandbytes_importable() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def lora_parameter_count(shape: ModelShape, r: int) -> int:
    """LoRA A and B over all seven projections: r * (fan_in + fan_out) each."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_kv_heads * shape.head_dim
    fans = (h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h)
    return r * fans * shape.num_layers


def weight_bytes(shape: ModelShape, dtype: str, load_in_4bit: bool) -> int:
    if load_in_4bit:
        # NF4 with double quantisation is ~0.5 byte a weight; embeddings and norms stay 16-bit.
        return int(shape.parameters * 0.6)
    return shape.parameters * (4 if dtype == "float32" else 2)


def activation_bytes_per_token(
    shape: ModelShape, r: int, dtype: str, gradient_checkpointing: bool
) -> int:
    """Bytes kept for backward a token. Without checkpointing every layer keeps its tensors;
    with it only each layer's input is kept and one layer is recomputed at a time."""
    element = 4 if dtype == "float32" else 2
    per_layer = (
        _ACT_HIDDEN_TENSORS * shape.hidden_size
        + _ACT_INTERMEDIATE_TENSORS * shape.intermediate_size
        + _PROJECTIONS_PER_LAYER * r
    ) * element
    if gradient_checkpointing:
        return shape.num_layers * shape.hidden_size * element + per_layer
    return shape.num_layers * per_layer


def plan_memory(
    shape: ModelShape,
    *,
    device: str,
    free_bytes: int | None,
    longest_pair_tokens: int,
    r: int,
    dtype: str,
    load_in_4bit: bool = False,
    requested_micro_batch: int | None = None,
    requested_checkpointing: bool | None = None,
) -> MemoryPlan:
    """Micro-batch and activation checkpointing from the free memory of the device.

    `longest_pair_tokens` is the longest prompt+completion of the dataset (chosen and
    rejected each count it: the collator pads both halves of the batch to the longest one).
    Checkpointing costs a second forward (~33% more compute), so it is used only when
    not even a micro-batch of one fits without it. A user's explicit choices win.
    """
    if device != "cuda" or free_bytes is None:
        # CPU: memory is plentiful and compute is the limit; 2 pairs keeps steps short and
        # the progress stream lively. Checkpointing would only add compute.
        micro = requested_micro_batch or CPU_MICRO_BATCH
        return MemoryPlan(
            micro_batch=micro,
            gradient_checkpointing=bool(requested_checkpointing),
            precompute_ref_batch_size=micro,
            reason="cpu: fixed micro-batch, no checkpointing",
        )

    fixed = (
        weight_bytes(shape, dtype, load_in_4bit)
        + lora_parameter_count(shape, r) * _TRAINABLE_STATE_BYTES
        + _FIXED_OVERHEAD_BYTES
    )
    budget = int(free_bytes * _MEMORY_SHARE) - fixed
    tokens_per_pair = 2 * max(1, longest_pair_tokens)

    def fits(checkpointing: bool) -> int:
        per_pair = tokens_per_pair * activation_bytes_per_token(shape, r, dtype, checkpointing)
        return max(0, budget // per_pair) if budget > 0 else 0

    if requested_checkpointing is None:
        checkpointing = fits(False) < 1
        why = (
            "checkpointing on: one pair of the longest length does not fit without it"
            if checkpointing
            else "checkpointing off: it fits, and recomputing activations costs a forward"
        )
    else:
        checkpointing = requested_checkpointing
        why = f"checkpointing {'on' if checkpointing else 'off'} as requested"

    capacity = fits(checkpointing)
    if requested_micro_batch is not None:
        micro = requested_micro_batch
        why += f"; micro-batch {micro} as requested (estimated capacity {capacity})"
    else:
        micro = max(1, min(MAX_AUTO_MICRO_BATCH, capacity))
        why += f"; micro-batch {micro} (estimated capacity {capacity}, cap {MAX_AUTO_MICRO_BATCH})"
        if capacity < 1:
            logger.warning("the memory estimate says even one pair may not fit: %s", why)
    per_pair = tokens_per_pair * activation_bytes_per_token(shape, r, dtype, checkpointing)
    # The reference pre-pass runs without gradients: only one layer's activations live at a
    # time, so it takes bigger batches for free (fewer, fuller kernels).
    precompute = min(4 * micro, 64)
    return MemoryPlan(
        micro_batch=micro,
        gradient_checkpointing=checkpointing,
        precompute_ref_batch_size=precompute,
        reason=why,
        free_bytes=free_bytes,
        estimated_peak_bytes=fixed + micro * per_pair,
    )


def probe_free_gpu_bytes() -> int | None:
    """Free memory of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def count_parameters(config: Any) -> int:
    """Exact parameter count from the config alone: build the model on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # tied weights appear once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
