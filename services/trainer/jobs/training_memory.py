"""The memory plan of a DPO job: micro-batch and activation checkpointing from the free memory
of the device, the model's shape and the LoRA rank. Pure functions of plain numbers (no GPU
needed), so tests/unit/test_training_config.py checks the plan with made-up memory figures;
`probe_free_gpu_bytes` and `count_parameters` are the two that look at the machine or the
model, and the job (dpo.py) calls them once and passes the numbers on.

The activation model is calibrated on measurements at the Qwen2.5-7B shape on one H100
(/work/shared/notes/trl-peft.md: batch 8, 2 x 512 tokens a pair, no checkpointing, precomputed
reference log-probs: 58 GB peak with 15 GB of bf16 weights, i.e. ~5.2 MB of activations a token),
with Liger's kernels on; without them the same run peaked at 69 GB (`_NO_LIGER_ACTIVATION_FACTOR`).
With activation checkpointing the plan counts only the layer inputs kept for backward and
leaves a fixed margin below the free memory (`_CHECKPOINTED_MARGIN_BYTES`), calibrated on the
32B shape (docs/benchmarks-history.md, section 3).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

GIB = 1024**3

# Seven adapted projections a decoder layer (q, k, v, o, gate, up, down).
_PROJECTIONS_PER_LAYER = 7
# Bytes a trainable LoRA parameter costs: fp32 weight + fp32 grad + two fp32 Adam moments.
_TRAINABLE_STATE_BYTES = 16
# With 8-bit AdamW (bitsandbytes) the two moments take a byte each (plus blockwise scales).
_TRAINABLE_STATE_BYTES_8BIT = 10
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
# Without Liger's fused RMSNorm/SwiGLU/RoPE kernels the unfused ops keep more for backward
# (RMSNorm's fp32 upcast, SwiGLU's intermediates). Measured at the 7B shape, batch 8 of
# 2 x 512 tokens, no checkpointing (notes/trl-peft.md): 69 GB peak without Liger, 58 GB with:
# 11 GB / 8,192 tokens = 1.34 MB a token more, 26% over the 5.2 MB a token modelled with it.
# A plan that assumes Liger where it is absent overfills the card on step 1.
_NO_LIGER_ACTIVATION_FACTOR = 1.26
# With checkpointing the fixed cost (weights, LoRA state) is most of the card at 32B, and
# holding back 12% of the free memory (`_MEMORY_SHARE`) would leave room for one pair a step.
# Checkpointed plans instead keep this fixed margin below the free memory, for the one layer recomputed at a time, CUDA workspaces and the
# allocator's fragmentation. Measured at 32B on an H100 (84.5 GB free, longest pair 734
# tokens): 4 pairs with checkpointing peaked at 77.9 GB allocated / 79.1 GB reserved
# (1,182 tokens/s against plain TRL's 618 on the same card); this model estimates 78.0 GB.
_CHECKPOINTED_MARGIN_BYTES = 5 * 10**9
# The largest micro-batch the margin-based checkpointed plan picks: the one measured (above).
MAX_CHECKPOINTED_MICRO_BATCH = 4
# Above this many pairs a micro-batch, a bigger one buys no GPU utilisation and only
# shrinks the number of optimiser steps an epoch has.
MAX_AUTO_MICRO_BATCH = 16
CPU_MICRO_BATCH = 2


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
    activation_positions: int | None = None
    """Positions whose activations fit the plan's budget (GPU only): what a packed
    micro-batch may hold, where no position is padding or a second prompt."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_state_bytes(optimizer: str) -> int:
    """Bytes a trainable parameter costs with this optimizer (`adamw` or `adamw_8bit`)."""
    return _TRAINABLE_STATE_BYTES_8BIT if optimizer == "adamw_8bit" else _TRAINABLE_STATE_BYTES


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


def state_bytes(shape: ModelShape, r: int, dtype: str, load_in_4bit: bool, optimizer: str) -> int:
    """What a job holds whatever its batch: the base weights and the LoRA parameters with
    their gradients and optimizer state."""
    return weight_bytes(shape, dtype, load_in_4bit) + lora_parameter_count(
        shape, r
    ) * trainable_state_bytes(optimizer)


def activation_bytes_per_token(
    shape: ModelShape,
    r: int,
    dtype: str,
    gradient_checkpointing: bool,
    use_liger_kernel: bool = True,
) -> int:
    """Bytes kept for backward a token. Without checkpointing every layer keeps its tensors
    (more without Liger's fused kernels); with it only each layer's input is kept and one
    layer is recomputed at a time."""
    element = 4 if dtype == "float32" else 2
    factor = 1.0 if use_liger_kernel else _NO_LIGER_ACTIVATION_FACTOR
    per_layer = int(
        (
            _ACT_HIDDEN_TENSORS * shape.hidden_size
            + _ACT_INTERMEDIATE_TENSORS * shape.intermediate_size
            + _PROJECTIONS_PER_LAYER * r
        )
        * element
        * factor
    )
    if gradient_checkpointing:
        return layer_input_bytes_per_token(shape, dtype) + per_layer
    return shape.num_layers * per_layer


def layer_input_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    """What checkpointing keeps a token: each layer's input. The margin-based checkpointed
    plan counts only this (the recomputed layer lives in `_CHECKPOINTED_MARGIN_BYTES`)."""
    return shape.num_layers * shape.hidden_size * (4 if dtype == "float32" else 2)


def plan_memory(
    shape: ModelShape,
    *,
    device: str,
    free_bytes: int | None,
    longest_pair_tokens: int,
    r: int,
    dtype: str,
    use_liger_kernel: bool,
    load_in_4bit: bool = False,
    optimizer: str = "adamw",
    requested_micro_batch: int | None = None,
    requested_checkpointing: bool | None = None,
) -> MemoryPlan:
    """Micro-batch and activation checkpointing from the free memory of the device.

    `longest_pair_tokens` is the longest prompt+completion of the dataset (chosen and
    rejected each count it: the collator pads both halves of the batch to the longest one).
    Checkpointing costs a second forward (~33% more compute), so it is used only when
    not even a micro-batch of one fits without it. `use_liger_kernel` is what the job will
    really run with (no default: a plan that assumed Liger ran out of memory without it);
    `optimizer` (from `choose_optimizer`) sizes the LoRA state. A user's explicit choices win.
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

    state = state_bytes(shape, r, dtype, load_in_4bit, optimizer)
    fixed = state + _FIXED_OVERHEAD_BYTES
    budget = int(free_bytes * _MEMORY_SHARE) - fixed
    tokens_per_pair = 2 * max(1, longest_pair_tokens)

    def per_pair(checkpointing: bool) -> int:
        return tokens_per_pair * activation_bytes_per_token(
            shape, r, dtype, checkpointing, use_liger_kernel
        )

    def fits(checkpointing: bool) -> int:
        return max(0, budget // per_pair(checkpointing)) if budget > 0 else 0

    # Checkpointed, against the free memory minus a fixed margin (see
    # _CHECKPOINTED_MARGIN_BYTES): used where it allows more than the share-based plan,
    # i.e. where weights and LoRA state take most of the card (32B on one 80 GB card).
    margin_per_pair = tokens_per_pair * layer_input_bytes_per_token(shape, dtype)
    margin_budget = free_bytes - _CHECKPOINTED_MARGIN_BYTES - state
    margin_capacity = (
        min(MAX_CHECKPOINTED_MICRO_BATCH, margin_budget // margin_per_pair)
        if margin_budget > 0
        else 0
    )

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
    if not use_liger_kernel:
        why += "; activations sized for unfused kernels (no Liger)"

    capacity = fits(checkpointing)
    peak_fixed, peak_per_pair = fixed, per_pair(checkpointing)
    positions_budget = budget
    if checkpointing and margin_capacity > capacity:
        capacity = margin_capacity
        peak_fixed, peak_per_pair = state, margin_per_pair
        positions_budget = margin_budget
        why += (
            f"; planned against free memory minus a {_CHECKPOINTED_MARGIN_BYTES / 1e9:.0f} GB"
            f" margin (up to {MAX_CHECKPOINTED_MICRO_BATCH} pairs)"
        )
    if requested_micro_batch is not None:
        micro = requested_micro_batch
        why += f"; micro-batch {micro} as requested (estimated capacity {capacity})"
    else:
        micro = max(1, min(MAX_AUTO_MICRO_BATCH, capacity))
        why += f"; micro-batch {micro} (estimated capacity {capacity}, cap {MAX_AUTO_MICRO_BATCH})"
        if capacity < 1:
            logger.warning("the memory estimate says even one pair may not fit: %s", why)
    # The reference pre-pass runs without gradients: only one layer's activations live at a
    # time, so it takes bigger batches for free (fewer, fuller kernels).
    precompute = min(4 * micro, 64)
    return MemoryPlan(
        micro_batch=micro,
        gradient_checkpointing=checkpointing,
        precompute_ref_batch_size=precompute,
        reason=why,
        free_bytes=free_bytes,
        estimated_peak_bytes=peak_fixed + micro * peak_per_pair,
        activation_positions=max(0, positions_budget) // (peak_per_pair // tokens_per_pair),
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
