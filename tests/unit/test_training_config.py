"""The DPO job's pure decisions: spec -> TRL/PEFT configs, device, dtype, memory plan, batching."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from trl import DPOConfig

from protocol.jobs import QWEN_PROJECTIONS, DpoJobSpec, DpoSpec, LoraSpec
from services.trainer.jobs.merge import MergeError, check_adapter_base, merge_dtype
from services.trainer.jobs.training_callbacks import eta_seconds, numeric_metrics
from services.trainer.jobs.training_config import (
    SpeedChoices,
    TrainingConfigError,
    dpo_config_kwargs,
    lora_config,
    loss_types,
    trainer_optimizer,
)
from services.trainer.jobs.training_data import length_grouped_indices
from services.trainer.jobs.training_device import (
    DeviceUnsupportedError,
    check_quantization,
    choose_optimizer,
    resolve_device,
    training_dtype,
    use_cudnn_attention,
    use_liger_kernel,
)
from services.trainer.jobs.training_memory import (
    CPU_MICRO_BATCH,
    GIB,
    MAX_AUTO_MICRO_BATCH,
    MAX_CHECKPOINTED_MICRO_BATCH,
    MemoryPlan,
    ModelShape,
    plan_memory,
)

# Qwen2.5-7B and -32B shapes (config.json of the published models).
QWEN_7B = ModelShape(
    parameters=7_615_616_512,
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_kv_heads=4,
    head_dim=128,
)
QWEN_32B = ModelShape(
    parameters=32_763_876_352,
    hidden_size=5120,
    intermediate_size=27648,
    num_layers=64,
    num_kv_heads=8,
    head_dim=128,
)
H100_FREE = 78 * GIB


def gpu_plan(shape: ModelShape, free: int, longest: int, **choices: Any) -> MemoryPlan:
    """A plan on CUDA in bf16 with r 64 and Liger on: what most tests vary one thing of."""
    kwargs: dict[str, Any] = {"use_liger_kernel": True} | choices
    return plan_memory(
        shape,
        device="cuda",
        free_bytes=free,
        longest_pair_tokens=longest,
        r=64,
        dtype="bfloat16",
        **kwargs,
    )


def spec(**dpo: object) -> DpoJobSpec:
    return DpoJobSpec(
        base_model="tiny", dataset_id="ds-1", output_name="a", dpo=DpoSpec.model_validate(dpo)
    )


def cpu_choices(micro: int = 2) -> SpeedChoices:
    plan = MemoryPlan(micro, False, micro, "test")
    return SpeedChoices("cpu", "float32", plan, False, "sdpa", True)


# --- LoRA --------------------------------------------------------------------------------


def test_lora_defaults_are_rank_64_alpha_equal_rank_all_seven_projections() -> None:
    config = lora_config(LoraSpec())
    assert config.r == 64
    assert config.lora_alpha == 64
    assert config.target_modules is not None
    assert set(config.target_modules) == set(QWEN_PROJECTIONS)
    assert config.use_rslora is False
    assert config.modules_to_save is None


def test_lora_alpha_follows_rank_unless_given() -> None:
    assert lora_config(LoraSpec(r=16)).lora_alpha == 16
    assert lora_config(LoraSpec(r=16, lora_alpha=32)).lora_alpha == 32


def test_rslora_is_passed_through() -> None:
    assert lora_config(LoraSpec(r=8, use_rslora=True)).use_rslora is True


def test_lm_head_cannot_be_a_target() -> None:
    with pytest.raises(TrainingConfigError, match="lm_head"):
        lora_config(LoraSpec(target_modules=["q_proj", "lm_head"]))


# --- DPOConfig ---------------------------------------------------------------------------


def test_dpo_kwargs_build_a_valid_dpo_config_on_cpu(tmp_path: Path) -> None:
    kwargs = dpo_config_kwargs(spec(), cpu_choices(), tmp_path)
    config = DPOConfig(**kwargs)
    assert config.bf16 is False
    assert config.use_cpu is True
    assert config.precompute_ref_log_probs is True
    assert config.gradient_checkpointing is False
    assert config.save_strategy == "no"
    assert config.report_to == []
    assert config.logging_steps == 1
    assert config.per_device_train_batch_size == 2
    assert config.learning_rate == 5e-6
    assert config.beta == 0.1
    assert config.loss_type == ["sigmoid"]
    assert config.output_dir == str(tmp_path / "trl")


def test_warmup_ratio_maps_to_fractional_warmup_steps(tmp_path: Path) -> None:
    assert (
        dpo_config_kwargs(spec(warmup_ratio=0.25), cpu_choices(), tmp_path)["warmup_steps"] == 0.25
    )


def test_gpu_choices_turn_on_bf16(tmp_path: Path) -> None:
    plan = MemoryPlan(6, False, 24, "test")
    choices = SpeedChoices("cuda", "bfloat16", plan, True, "sdpa", True)
    kwargs = dpo_config_kwargs(spec(), choices, tmp_path)
    assert kwargs["bf16"] is True
    assert kwargs["use_cpu"] is False
    assert kwargs["use_liger_kernel"] is True
    assert kwargs["per_device_train_batch_size"] == 6
    assert kwargs["precompute_ref_batch_size"] == 24


def test_loss_types_accept_combinations_and_refuse_typos() -> None:
    assert loss_types("sigmoid") == ["sigmoid"]
    assert loss_types("sigmoid, sft") == ["sigmoid", "sft"]
    with pytest.raises(TrainingConfigError, match="sigmoyd"):
        loss_types("sigmoyd")


def test_speed_choices_record_every_decision() -> None:
    recorded = cpu_choices().as_dict()
    for key in (
        "device",
        "dtype",
        "micro_batch",
        "gradient_checkpointing",
        "use_liger_kernel",
        "attn_implementation",
        "length_grouped_batches",
        "padding_free",
    ):
        assert key in recorded


# --- device, dtype, quantisation ------------------------------------------------------------


def test_bf16_on_gpu_fp32_on_cpu() -> None:
    assert training_dtype("cuda") == "bfloat16"
    assert training_dtype("cpu") == "float32"


def test_cuda_requested_without_a_gpu_is_refused() -> None:
    with pytest.raises(DeviceUnsupportedError, match="no CUDA device"):
        resolve_device("cuda", cuda_available=False)
    assert resolve_device("cpu", cuda_available=True) == "cpu"


def test_4bit_on_cpu_is_refused_with_a_clear_message() -> None:
    with pytest.raises(DeviceUnsupportedError, match="load_in_4bit needs a CUDA GPU"):
        check_quantization(True, "cpu", bitsandbytes_available=True)


def test_4bit_on_gpu_needs_bitsandbytes() -> None:
    with pytest.raises(DeviceUnsupportedError, match="bitsandbytes"):
        check_quantization(True, "cuda", bitsandbytes_available=False)
    check_quantization(True, "cuda", bitsandbytes_available=True)
    check_quantization(False, "cpu", bitsandbytes_available=False)


def test_liger_only_on_cuda_and_when_installed() -> None:
    assert use_liger_kernel("cuda", True) is True
    assert use_liger_kernel("cuda", False) is False
    assert use_liger_kernel("cpu", True) is False


# --- memory plan -------------------------------------------------------------------------


def test_cpu_plan_is_two_pairs_without_checkpointing() -> None:
    plan = plan_memory(
        QWEN_7B,
        device="cpu",
        free_bytes=None,
        longest_pair_tokens=900,
        r=64,
        dtype="float32",
        use_liger_kernel=False,
    )
    assert plan.micro_batch == CPU_MICRO_BATCH
    assert plan.gradient_checkpointing is False


def test_7b_on_an_h100_trains_without_checkpointing_and_a_bigger_batch_than_trl() -> None:
    plan = gpu_plan(QWEN_7B, H100_FREE, 900)
    assert plan.gradient_checkpointing is False
    assert plan.micro_batch >= 4
    assert plan.estimated_peak_bytes is not None and plan.estimated_peak_bytes < H100_FREE


def test_measured_7b_point_is_reproduced() -> None:
    # notes/trl-peft.md: batch 8 of 2 x 512 tokens without checkpointing peaked at 58 GB.
    plan = gpu_plan(QWEN_7B, H100_FREE, 512, requested_micro_batch=8)
    assert plan.estimated_peak_bytes is not None
    assert 52e9 < plan.estimated_peak_bytes < 66e9


def test_32b_on_an_h100_needs_checkpointing_and_still_fits() -> None:
    plan = gpu_plan(QWEN_32B, H100_FREE, 900)
    assert plan.gradient_checkpointing is True
    # The fixed cost is most of the card: the checkpointed plan keeps a fixed margin below
    # the free memory instead of 12% of it, so more than one pair fits (it used to be 1).
    assert 1 < plan.micro_batch <= MAX_CHECKPOINTED_MICRO_BATCH
    assert plan.estimated_peak_bytes is not None and plan.estimated_peak_bytes < H100_FREE


def test_measured_32b_point_is_reproduced() -> None:
    # docs/benchmarks-history.md section 3: H100, 84.47 GB free, longest pair 734 tokens, 4 pairs
    # with checkpointing peaked at 77.9 GB allocated (1,182 tokens/s; 1 pair gave 450).
    free = 84_465_090_560
    plan = gpu_plan(QWEN_32B, free, 734)
    assert plan.gradient_checkpointing is True
    assert plan.micro_batch == 4
    assert plan.estimated_peak_bytes is not None
    assert 76e9 < plan.estimated_peak_bytes < 80e9
    assert plan.estimated_peak_bytes < free


def test_packed_positions_fill_what_whole_padded_pairs_leave() -> None:
    # The H200 run of 2026-12-03 (149.6 GB free, 32B, 900 pairs, longest 901 tokens): one
    # padded pair of the longest length fits, 1,802 positions; the activations that fit are
    # more than that, and within the same budget as the pair count.
    free = 149_557_477_376
    plan = gpu_plan(QWEN_32B, free, 901)
    assert (plan.micro_batch, plan.gradient_checkpointing) == (1, False)
    assert plan.activation_positions is not None and plan.activation_positions > 1.5 * 1802
    from services.trainer.jobs.training_memory import activation_bytes_per_token

    per_position = activation_bytes_per_token(QWEN_32B, 64, "bfloat16", False)
    fixed = (plan.estimated_peak_bytes or 0) - 1802 * per_position
    assert fixed + plan.activation_positions * per_position < 0.9 * free
    cpu = plan_memory(
        QWEN_32B,
        device="cpu",
        free_bytes=None,
        longest_pair_tokens=901,
        r=64,
        dtype="float32",
        use_liger_kernel=False,
    )
    assert cpu.activation_positions is None


def test_checkpointed_plan_still_refuses_what_does_not_fit() -> None:
    plan = gpu_plan(QWEN_32B, 72 * GIB, 900)
    assert plan.gradient_checkpointing is True
    assert plan.micro_batch == 1
    assert "estimated capacity 0" in plan.reason


def test_without_liger_the_plan_sizes_for_more_activations() -> None:
    # The plan used to assume Liger: with it off it chose 7 pairs at 7B and ran out of
    # memory on step 1.
    def plan(liger: bool, micro: int | None = None) -> MemoryPlan:
        return gpu_plan(
            QWEN_7B, H100_FREE, 900, use_liger_kernel=liger, requested_micro_batch=micro
        )

    assert plan(False).micro_batch < plan(True).micro_batch
    assert "no Liger" in plan(False).reason
    # notes/trl-peft.md: batch 8 of 2 x 512 tokens, no checkpointing: 69 GB without Liger,
    # 58 GB with. The model keeps the 11 GB difference.
    with_liger = gpu_plan(QWEN_7B, H100_FREE, 512, requested_micro_batch=8).estimated_peak_bytes
    without = gpu_plan(
        QWEN_7B, H100_FREE, 512, use_liger_kernel=False, requested_micro_batch=8
    ).estimated_peak_bytes
    assert with_liger is not None and without is not None
    assert 9e9 < without - with_liger < 13e9


def test_cudnn_attention_is_off_and_recorded() -> None:
    assert use_cudnn_attention("cuda") is False
    assert use_cudnn_attention("cpu") is False
    assert cpu_choices().as_dict()["cudnn_attention"] is False


def test_lora_input_cast_is_switched_off_in_every_lora_layer(tiny_model: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from services.trainer.jobs.dpo import disable_lora_input_cast

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = get_peft_model(base, lora_config(LoraSpec(r=4)))
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert lora_layers and all(m.cast_input_dtype_enabled for m in lora_layers)
    assert disable_lora_input_cast(model) == len(lora_layers)
    assert not any(m.cast_input_dtype_enabled for m in lora_layers)


def test_short_rows_on_a_big_card_hit_the_batch_cap() -> None:
    plan = gpu_plan(QWEN_7B, H100_FREE, 64)
    assert plan.micro_batch == MAX_AUTO_MICRO_BATCH
    assert plan.gradient_checkpointing is False


def test_less_memory_means_a_smaller_batch() -> None:
    def micro(free: int) -> int:
        return gpu_plan(QWEN_7B, free, 900).micro_batch

    assert micro(40 * GIB) < micro(78 * GIB)


def test_explicit_choices_win_over_the_plan() -> None:
    plan = gpu_plan(QWEN_7B, H100_FREE, 900, requested_micro_batch=3, requested_checkpointing=True)
    assert plan.micro_batch == 3
    assert plan.gradient_checkpointing is True


def test_precompute_pass_uses_a_bigger_batch_on_gpu() -> None:
    plan = gpu_plan(QWEN_7B, H100_FREE, 900)
    assert plan.precompute_ref_batch_size == min(4 * plan.micro_batch, 64)


# --- batching, progress, merge --------------------------------------------------------------


@pytest.mark.parametrize(("rows", "batch"), [(900, 4), (900, 8), (900, 11), (901, 14)])
def test_length_grouped_batches_cover_every_row_once_with_little_padding(
    rows: int, batch: int
) -> None:
    # Cut into consecutive runs of `batch`, as the Trainer's batch sampler does: row counts
    # that are not a multiple of the batch size used to misalign every cut after the short
    # group (these lengths: 1.10, 1.27 and 1.17 padded positions a token at 8, 11 and 14,
    # against 1.02 now).
    rng = random.Random(0)
    lengths = [rng.randint(70, 900) for _ in range(rows)]
    order = length_grouped_indices(lengths, batch, random.Random(1))
    assert sorted(order) == list(range(rows))
    batches = [order[i : i + batch] for i in range(0, rows, batch)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)
    assert max(lengths[i] for i in batches[0]) == max(lengths)


def test_the_one_short_group_comes_last_and_holds_the_shortest_rows_of_its_megabatch() -> None:
    lengths = [100, 900, 300, 500, 700, 200, 800]
    order = length_grouped_indices(lengths, 3, random.Random(4))
    batches = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for i in batches[-1]] == [100]
    assert max(lengths[i] for i in batches[0]) == 900


def test_length_grouping_changes_with_the_seed() -> None:
    lengths = list(range(100))
    a = length_grouped_indices(lengths, 2, random.Random(1))
    b = length_grouped_indices(lengths, 2, random.Random(2))
    assert a != b


def test_eta_from_mean_pace() -> None:
    assert eta_seconds(10.0, 5, 15) == pytest.approx(20.0)
    assert eta_seconds(10.0, 0, 15) is None
    assert eta_seconds(10.0, 5, None) is None


def test_numeric_metrics_keep_finite_numbers_only() -> None:
    assert numeric_metrics({"loss": 0.5, "epoch": 1, "x": "s", "nan": float("nan"), "b": True}) == {
        "loss": 0.5,
        "epoch": 1.0,
    }


def test_merge_dtype_auto_is_bf16_on_gpu_fp32_on_cpu() -> None:
    assert merge_dtype("auto", "cuda") == "bfloat16"
    assert merge_dtype("auto", "cpu") == "float32"
    assert merge_dtype("float16", "cpu") == "float16"


def test_merge_refuses_an_adapter_of_another_base(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(MergeError, match="trained on"):
        check_adapter_base({"base_model_name_or_path": str(tmp_path / "a")}, str(tmp_path / "b"))
    check_adapter_base({"base_model_name_or_path": str(tmp_path / "a")}, str(tmp_path / "a/"))


# --- optimizer ---------------------------------------------------------------------------

MEASURED_H100_FREE = 84_465_090_560  # docs/benchmarks-history.md section 3


def choose(
    requested: str = "auto",
    shape: ModelShape = QWEN_32B,
    device: str = "cuda",
    free: int | None = MEASURED_H100_FREE,
    processes: int = 1,
    usable: bool = True,
) -> tuple[str, str]:
    return choose_optimizer(
        requested,
        shape,
        device=device,
        free_bytes=free,
        r=64,
        dtype="bfloat16",
        load_in_4bit=False,
        processes=processes,
        eight_bit_usable=usable,
    )


def test_auto_keeps_exact_adamw_at_7b_and_on_cpu() -> None:
    assert choose(shape=QWEN_7B)[0] == "adamw"
    assert choose(device="cpu", free=None)[0] == "adamw"


def test_auto_takes_8bit_moments_where_32b_state_fills_one_card() -> None:
    name, why = choose()
    assert name == "adamw_8bit"
    assert "88%" in why  # 74 GB of weights and fp32 LoRA state of 84.5 GB free


def test_auto_falls_back_to_adamw_without_bitsandbytes_or_under_fsdp() -> None:
    name, why = choose(usable=False)
    assert name == "adamw" and "bitsandbytes not usable" in why
    assert choose(processes=2)[0] == "adamw"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"device": "cpu", "free": None}, ["CUDA", "adamw or auto"]),
        ({"processes": 2}, ["several processes", "adamw or auto"]),
        ({"usable": False}, ["bitsandbytes", "adamw or auto"]),
    ],
)
def test_explicit_8bit_is_refused_where_it_cannot_run(
    kwargs: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(DeviceUnsupportedError) as err:
        choose("adamw_8bit", **kwargs)  # type: ignore[arg-type]
    for word in words:
        assert word in str(err.value)


def test_explicit_adamw_wins_over_auto() -> None:
    assert choose("adamw") == ("adamw", "adamw as requested")


def test_8bit_moments_leave_more_room_at_32b() -> None:
    def peak(optimizer: str) -> int:
        plan = gpu_plan(QWEN_32B, MEASURED_H100_FREE, 734, optimizer=optimizer)
        assert plan.micro_batch == MAX_CHECKPOINTED_MICRO_BATCH
        assert plan.estimated_peak_bytes is not None
        return plan.estimated_peak_bytes

    # 537M trainable parameters x 6 bytes fewer (two 1-byte moments instead of two fp32 ones)
    assert 3.1e9 < peak("adamw") - peak("adamw_8bit") < 3.4e9


def test_optimizer_maps_to_transformers_names() -> None:
    plan = MemoryPlan(4, True, 16, "test")

    def name(device: str, optimizer: str) -> str:
        return trainer_optimizer(
            SpeedChoices(device, "bfloat16", plan, True, "sdpa", True, optimizer=optimizer)
        )

    assert name("cuda", "adamw_8bit") == "adamw_bnb_8bit"
    assert name("cuda", "adamw") == "adamw_torch_fused"
    assert name("cpu", "adamw") == "adamw_torch"
    recorded = SpeedChoices("cuda", "bfloat16", plan, True, "sdpa", True, optimizer="adamw_8bit")
    assert recorded.as_dict()["optimizer"] == "adamw_8bit"


def test_trls_lora_layers_are_built_on_the_jobs_card(monkeypatch: pytest.MonkeyPatch) -> None:
    # The job builds TRL's LoRA layers on the GPU (dpo_trainer.adapters_built_on): PEFT's
    # layer construction runs under the device context, and only while the trainer is built.
    import torch
    import trl.trainer.dpo_trainer as dpo_module

    from services.trainer.jobs.dpo_trainer import adapters_built_on

    built_on: list[torch.device] = []

    def recording(model: Any, config: Any, **kwargs: Any) -> Any:
        built_on.append(torch.empty(0).device)  # where an nn.Linear made here would live
        return model

    monkeypatch.setattr(dpo_module, "get_peft_model", recording)
    with adapters_built_on("meta"):
        assert dpo_module.get_peft_model("model", "config") == "model"
    with adapters_built_on(None):
        dpo_module.get_peft_model("model", "config")
    dpo_module.get_peft_model("model", "config")
    assert built_on == [torch.device("meta"), torch.device("cpu"), torch.device("cpu")]
    assert dpo_module.get_peft_model is recording
