"""A `DpoJobSpec` plus the device decisions -> TRL `DPOConfig` kwargs and PEFT `LoraConfig`.

Pure functions: no model, no GPU. tests/unit/test_training_config.py checks every mapping.
The job (dpo.py) builds the real objects from these and stores their `to_dict()` with the
job's result, so what was trained is always on record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig

from protocol.jobs import FORBIDDEN_TARGETS, DpoJobSpec, LoraSpec, parse_loss_types
from services.trainer.jobs.packing_plan import PackingChoice
from services.trainer.jobs.training_memory import MemoryPlan


class TrainingConfigError(ValueError):
    """The spec cannot be turned into a valid training configuration; the message says why."""


@dataclass(frozen=True)
class SpeedChoices:
    """What the job decided for speed, recorded with the result."""

    device: str
    dtype: str
    plan: MemoryPlan
    use_liger_kernel: bool
    attn_implementation: str
    length_grouped_batches: bool
    # sdpa's cuDNN backend (off on CUDA: it re-plans for every new sequence length; see
    # training_device.use_cudnn_attention). Never used on CPU.
    cudnn_attention: bool = False
    # `adamw` (fused fp32 on GPU) or `adamw_8bit` (training_device.choose_optimizer).
    optimizer: str = "adamw"
    # Shared-prompt packing (packing_plan.choose_packing); None: not packed.
    packing: PackingChoice | None = None

    @property
    def packed(self) -> bool:
        return self.packing is not None and self.packing.enabled

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "micro_batch": self.plan.micro_batch,
            "gradient_checkpointing": self.plan.gradient_checkpointing,
            "precompute_ref_batch_size": self.plan.precompute_ref_batch_size,
            "memory_plan": self.plan.as_dict(),
            "use_liger_kernel": self.use_liger_kernel,
            "attn_implementation": self.attn_implementation,
            "length_grouped_batches": self.length_grouped_batches and not self.packed,
            "cudnn_attention": self.cudnn_attention,
            "optimizer": self.optimizer,
            # TRL 1.16 disables its padding_free for DPO ("temporarily unavailable after a
            # refactor": it warns and pads). Packed micro-batches have no padding between
            # pairs; unpacked ones are length-grouped, so little padding is left.
            "padding_free": self.packed,
            "packing": self.packing.as_dict() if self.packing is not None else None,
        }


def loss_types(loss_type: str) -> list[str]:
    """`sigmoid` or a comma-separated combination such as `sigmoid,sft` (RPO). The spec
    refuses unknown names at submission; checked again here for specs built by hand."""
    try:
        return parse_loss_types(loss_type)
    except ValueError as exc:
        raise TrainingConfigError(str(exc)) from None


def lora_config(spec: LoraSpec) -> LoraConfig:
    """PEFT LoRA over the spec's projections; alpha defaults to r (scale 1)."""
    bad = sorted(FORBIDDEN_TARGETS.intersection(spec.target_modules))
    if bad:
        raise TrainingConfigError(
            f"target_modules {bad} cannot be adapted: vLLM serves LoRA on linear projections "
            "only (and TRL's fused LM head ignores an adapter on lm_head); remove them"
        )
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.effective_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules),
        use_rslora=spec.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=None,
    )


def dpo_config_kwargs(spec: DpoJobSpec, choices: SpeedChoices, work_dir: Path) -> dict[str, Any]:
    """Keyword arguments of `trl.DPOConfig` for this job."""
    dpo = spec.dpo
    on_gpu = choices.device == "cuda"
    return {
        # TRL's scratch (it writes nothing with save_strategy="no", but wants a folder).
        "output_dir": str(work_dir / "trl"),
        "seed": spec.seed,
        "data_seed": spec.seed,
        "learning_rate": dpo.learning_rate,
        "num_train_epochs": dpo.num_train_epochs,
        "per_device_train_batch_size": choices.plan.micro_batch,
        "per_device_eval_batch_size": choices.plan.micro_batch,
        "gradient_accumulation_steps": dpo.gradient_accumulation_steps,
        "max_length": dpo.max_length,
        "loss_type": loss_types(dpo.loss_type),
        "beta": dpo.beta,
        "precompute_ref_log_probs": dpo.precompute_ref_log_probs,
        "precompute_ref_batch_size": choices.plan.precompute_ref_batch_size,
        # transformers 5.23 renamed gradient_checkpointing; TRL reads the mirrored old name.
        "activation_checkpointing": choices.plan.gradient_checkpointing,
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is read as a ratio.
        "warmup_steps": dpo.warmup_ratio,
        "lr_scheduler_type": "linear",
        "logging_steps": dpo.logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "bf16": choices.dtype == "bfloat16",
        "fp16": False,
        "use_cpu": not on_gpu,
        "dataloader_pin_memory": on_gpu,
        "use_liger_kernel": choices.use_liger_kernel,
        "optim": trainer_optimizer(choices),
        "padding_free": False,
        "model_init_kwargs": None,
    }


def trainer_optimizer(choices: SpeedChoices) -> str:
    """transformers' `optim` name: bitsandbytes' 8-bit AdamW, else the fused AdamW kernel on
    GPU (one launch for all LoRA tensors) and the plain one on CPU."""
    if choices.optimizer == "adamw_8bit":
        return "adamw_bnb_8bit"
    return "adamw_torch_fused" if choices.device == "cuda" else "adamw_torch"


def check_parent_compatible(spec: DpoJobSpec, parent_config: dict[str, Any]) -> list[str]:
    """Iterative DPO keeps the parent's LoRA shape; list the spec fields it overrides."""
    differences = []
    if parent_config.get("r") not in (None, spec.lora.r):
        differences.append(f"r={parent_config.get('r')} (spec {spec.lora.r})")
    parent_targets = parent_config.get("target_modules")
    if parent_targets is not None and set(parent_targets) != set(spec.lora.target_modules):
        differences.append(f"target_modules={sorted(parent_targets)}")
    return differences
