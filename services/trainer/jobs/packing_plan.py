"""Whether a DPO job packs its pairs (services/trainer/jobs/packing.py), and how big a packed
micro-batch is: pure functions of the spec, the device and the model's config, each decision
with its reason (recorded in the job's log and result `config`, like training_device.py's).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.trainer.jobs.training_memory import MAX_AUTO_MICRO_BATCH, MemoryPlan

# Attention families whose packed log-probs are checked against the unpacked ones (the tiny
# test model is Qwen2; Qwen3 and Llama share its attention with custom 4-D masks and
# position ids). Others keep TRL's padded rows: a model with its own attention rules (Gemma's
# sliding windows and soft-capping, say) would silently lose them under a custom mask.
PACKABLE_MODEL_TYPES = ("qwen2", "qwen3", "llama")
# The losses the packed step computes exactly as TRL 1.16 does (dpo_trainer._compute_loss).
PACKED_LOSS_TYPES = frozenset({"sigmoid", "sft"})
# The attention functions packed rows use on CUDA, registered with transformers under these
# names: flash attention's variable-length kernel over the row's segments
# (packed_varlen.packed_varlen_attention; bf16/fp16 on Ampere or newer), else flex attention
# over the row's block mask (packing.packed_flex_attention).
PACKED_VARLEN_ATTENTION = "cai_packed_varlen"
PACKED_FLEX_ATTENTION = "cai_packed_flex"


class PackingUnsupportedError(ValueError):
    """The spec asks for packing (`dpo.packing: true`) where the job cannot pack."""


@dataclass(frozen=True)
class PackingChoice:
    enabled: bool
    reason: str
    attn_implementation: str | None = None
    """PACKED_VARLEN_ATTENTION or PACKED_FLEX_ATTENTION (CUDA) or `sdpa` (a dense mask)."""
    token_budget: int | None = None
    """Packed positions a micro-batch may hold (from the memory plan); None: no token limit."""
    max_pairs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def flex_attention_importable() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def _sliding_layers(config: Any) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    return bool(getattr(text, "use_sliding_window", False)) or any(
        kind != "full_attention" for kind in layer_types
    )


def choose_packing(
    requested: bool | None,
    *,
    device: str,
    processes: int,
    loss_types: Sequence[str],
    model_config: Any,
    flex_available: bool,
    varlen_available: bool = False,
) -> PackingChoice:
    """Pack where the job can: one process, a loss the packed step computes as TRL does, an
    attention family that takes the custom mask, and on CUDA variable-length flash attention
    or flex attention (a dense mask there would cost attention over the whole micro-batch).
    Flash first: prebuilt kernels, where flex compiles its own at a job's first micro-batch
    and first step (docs/benchmarks.md, section 3). `requested`: None decides, False keeps
    TRL's padded rows, True refuses to start where packing is impossible."""
    if requested is False:
        return PackingChoice(False, "off as requested (dpo.packing: false)")
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else None
    model_type = getattr(text or model_config, "model_type", None)
    blockers = []
    if processes > 1:
        blockers.append(f"{processes} processes (the packed sampler is single-process)")
    unsupported = sorted(set(loss_types) - PACKED_LOSS_TYPES)
    if unsupported:
        blockers.append(f"loss type {', '.join(unsupported)} (packed: sigmoid, sft)")
    if model_type not in PACKABLE_MODEL_TYPES:
        blockers.append(f"model type {model_type} (packed: {', '.join(PACKABLE_MODEL_TYPES)})")
    elif _sliding_layers(model_config):
        blockers.append("sliding-window attention layers")
    if device == "cuda" and not (flex_available or varlen_available):
        blockers.append("neither flash attention's varlen kernel nor flex attention usable")
    if blockers:
        if requested:
            raise PackingUnsupportedError(
                "dpo.packing is true but this job cannot pack: "
                + "; ".join(blockers)
                + ". Leave dpo.packing unset to fall back to padded batches"
            )
        return PackingChoice(False, "off: " + "; ".join(blockers))
    if device != "cuda":
        attention, how_masked = "sdpa", "sdpa with a dense mask"
    elif varlen_available:
        attention = PACKED_VARLEN_ATTENTION
        how_masked = f"{attention}: flash attention's varlen kernel, a sequence a segment"
    else:
        attention = PACKED_FLEX_ATTENTION
        how_masked = f"{attention} with a block mask (no varlen flash kernel for this card/dtype)"
    how = "as requested" if requested else "auto"
    return PackingChoice(
        True,
        f"on ({how}): prompt once a pair, pairs end to end, {how_masked}",
        attn_implementation=attention,
    )


def packed_batch_limits(
    choice: PackingChoice,
    plan: MemoryPlan,
    *,
    device: str,
    longest_pair_tokens: int,
    requested_micro_batch: int | None,
) -> PackingChoice:
    """The packed micro-batch: at most the positions whose activations the memory plan fits
    (`plan.activation_positions`; at least its `micro_batch` padded pairs of two rows of the
    longest pair), and at most MAX_AUTO_MICRO_BATCH pairs (more would only cut the optimiser
    steps of an epoch; the same cap as the padded plan). The padded plan rounds down to whole
    pairs of the longest length: at the 32B shape with a 901-token longest pair it fits one,
    1,802 positions, where 3,000 fit. On CPU, or with a micro-batch set in the spec, a
    micro-batch is that many pairs, as unpacked."""
    if not choice.enabled:
        return choice
    padded = plan.micro_batch * 2 * max(1, longest_pair_tokens)
    budget = max(padded, plan.activation_positions or 0)
    if device != "cuda" or requested_micro_batch is not None:
        pairs = plan.micro_batch
        reason = f"{choice.reason}; {pairs} pairs a micro-batch"
        return PackingChoice(True, reason, choice.attn_implementation, None, pairs)
    pairs = max(plan.micro_batch, MAX_AUTO_MICRO_BATCH)
    sized = (
        f"the activations the plan fits, against its {plan.micro_batch} x 2 x "
        f"{longest_pair_tokens} padded"
        if budget > padded
        else f"the plan's {plan.micro_batch} x 2 x {longest_pair_tokens}"
    )
    reason = (
        f"{choice.reason}; micro-batches of up to {budget} positions ({sized}) and {pairs} pairs"
    )
    return PackingChoice(True, reason, choice.attn_implementation, budget, pairs)
