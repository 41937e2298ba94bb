"""When the DPO job packs, and how big a packed micro-batch is (packing_plan.py)."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

from services.trainer.jobs.packing_plan import (
    PACKED_FLEX_ATTENTION,
    PACKED_VARLEN_ATTENTION,
    PackingChoice,
    PackingUnsupportedError,
    choose_packing,
    packed_batch_limits,
)
from services.trainer.jobs.training_memory import MAX_AUTO_MICRO_BATCH, MemoryPlan


def decide(requested: bool | None = None, **overrides: Any) -> PackingChoice:
    settings: dict[str, Any] = {
        "device": "cuda",
        "processes": 1,
        "loss_types": ["sigmoid"],
        "model_config": Qwen2Config(),
        "flex_available": True,
    } | overrides
    return choose_packing(requested, **settings)


def test_packs_qwen_and_llama_by_default_with_flex_on_cuda_and_sdpa_on_cpu() -> None:
    gpu = decide()
    assert gpu.enabled and gpu.attn_implementation == PACKED_FLEX_ATTENTION
    assert "auto" in gpu.reason and "no varlen flash kernel" in gpu.reason
    cpu = decide(device="cpu", model_config=LlamaConfig(), loss_types=["sigmoid", "sft"])
    assert cpu.enabled and cpu.attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"processes": 2}, "2 processes"),
        ({"loss_types": ["ipo"]}, "loss type ipo"),
        ({"model_config": Gemma3TextConfig()}, "model type gemma3_text"),
        ({"model_config": Qwen2Config(use_sliding_window=True)}, "sliding-window"),
        ({"flex_available": False}, "nor flex attention usable"),
    ],
)
def test_stays_unpacked_where_it_cannot_pack_and_says_why(
    overrides: dict[str, Any], why: str
) -> None:
    choice = decide(**overrides)
    assert not choice.enabled
    assert why in choice.reason


def test_flash_varlen_comes_first_on_cuda_where_usable() -> None:
    # Prebuilt kernels: nothing to compile at a job's first micro-batch (flex compiles).
    for flex in (True, False):
        gpu = decide(varlen_available=True, flex_available=flex)
        assert gpu.enabled and gpu.attn_implementation == PACKED_VARLEN_ATTENTION
        assert "varlen kernel" in gpu.reason
    cpu = decide(device="cpu", varlen_available=True)
    assert cpu.attn_implementation == "sdpa"


def test_the_spec_can_turn_it_off_and_insist_on_it() -> None:
    off = decide(False)
    assert not off.enabled and "as requested" in off.reason
    assert decide(True).enabled
    with pytest.raises(PackingUnsupportedError, match="2 processes"):
        decide(True, processes=2)


def plan(micro: int) -> MemoryPlan:
    return MemoryPlan(
        micro_batch=micro, gradient_checkpointing=False, precompute_ref_batch_size=micro, reason=""
    )


def test_gpu_micro_batches_take_the_positions_the_plan_sized_and_more_pairs() -> None:
    limits = packed_batch_limits(
        decide(), plan(11), device="cuda", longest_pair_tokens=900, requested_micro_batch=None
    )
    assert limits.token_budget == 11 * 2 * 900
    assert limits.max_pairs == MAX_AUTO_MICRO_BATCH
    assert "19800 positions" in limits.reason


def test_gpu_micro_batches_take_the_positions_the_plans_activations_fit() -> None:
    # One padded pair of 901 tokens fits (1,802 positions), but activations for 3,000 do.
    fits = MemoryPlan(
        micro_batch=1,
        gradient_checkpointing=False,
        precompute_ref_batch_size=4,
        reason="",
        activation_positions=3000,
    )
    limits = packed_batch_limits(
        decide(), fits, device="cuda", longest_pair_tokens=901, requested_micro_batch=None
    )
    assert limits.token_budget == 3000
    assert "3000 positions (the activations the plan fits" in limits.reason


def test_cpu_and_requested_micro_batches_stay_pair_counts() -> None:
    cpu = packed_batch_limits(
        decide(device="cpu"),
        plan(2),
        device="cpu",
        longest_pair_tokens=60,
        requested_micro_batch=None,
    )
    assert cpu.token_budget is None and cpu.max_pairs == 2
    asked = packed_batch_limits(
        decide(), plan(6), device="cuda", longest_pair_tokens=60, requested_micro_batch=6
    )
    assert asked.token_budget is None and asked.max_pairs == 6


def test_unpacked_choices_pass_through() -> None:
    off = decide(False)
    assert (
        packed_batch_limits(
            off, plan(4), device="cuda", longest_pair_tokens=9, requested_micro_batch=None
        )
        is off
    )
