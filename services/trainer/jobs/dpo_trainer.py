"""Building and finishing the DPO job's trainer: the pieces of dpo.py that touch TRL, PEFT
and transformers internals, each with the reason it exists, and the two steps after
training (saving the adapter, scoring the held-out pairs).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol.jobs import DpoJobSpec
from services.trainer.distributed import gather_adapter_state, process_rank
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.training_config import SpeedChoices
from services.trainer.jobs.training_data import (
    DatasetError,
    LengthGroupedSampler,
    read_rows,
    tokenize_pair,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def make_trainer_class(packed: bool = False) -> Any:
    """The packed trainer (packing_trainer.py), or TRL's DPOTrainer drawing micro-batches of
    similar length (training_data.LengthGroupedSampler)."""
    if packed:
        from services.trainer.jobs.packing_trainer import make_packed_trainer_class

        return make_packed_trainer_class()

    from datasets import Dataset
    from trl import DPOTrainer

    class LengthGroupedDPOTrainer(DPOTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            data = self.train_dataset
            if not isinstance(data, Dataset) or "length" not in data.column_names:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(
                data["length"], self.args.per_device_train_batch_size, self.args.seed
            )

    return LengthGroupedDPOTrainer


def disable_lora_input_cast(model: Any) -> int:
    """Turn off PEFT's cast of every LoRA layer's input to the adapter's dtype; returns how
    many layers had it.

    The LoRA weights are fp32 (master weights for Adam), so PEFT 0.21 casts each adapted
    projection's bf16 input to fp32 (`_cast_input_dtype`), and bf16 autocast casts it back
    for the matmul: two copies of each of the seven projections' inputs, forward and
    backward, and the fp32 copy is kept for backward (18% of GPU time in `aten::copy_` at
    the 7B shape, and 8 GB of peak memory). Under autocast the matmul runs in bf16 either
    way; the fp32 weights and fp32 Adam states stay. In fp32 (CPU) the cast is a no-op.
    `cast_input_dtype_enabled` is PEFT's own switch (peft.helpers.disable_input_dtype_casting
    sets it too, as a context manager; the job needs it for the whole of training).
    """
    switched = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            switched += 1
    return switched


def apply_liger_before_prepass(model: Any, args: Any) -> None:
    """Patch the model with the Liger kernels before the trainer is built.

    The Trainer applies them only in `train()`, after TRL's constructor has run its
    reference pre-pass: the reference log-probs would come from the stock RMSNorm, SwiGLU
    and RoPE and the policy's from Liger's, and a sequence's log-prob, a sum of a few
    hundred bf16 per-token values, differs by about a nat between the two: an offset every
    pair keeps for the whole epoch, and a first-step loss away from ln 2. `train()` patching
    again changes nothing. The config is the one TRL hands the Trainer.
    """
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(
        model, {**(args.liger_kernel_config or {}), "fused_linear_cross_entropy": False}
    )


@contextlib.contextmanager
def no_weight_hashing(key: str) -> Iterator[None]:
    """Skip TRL's fingerprint of the reference weights while the trainer is built.

    With precompute_ref_log_probs, TRL 1.16 sha256-hashes every weight (copied to host and
    upcast to fp32: ~30 GB at 7B, ~130 GB at 32B) only to name the cache of the reference
    log-probs. Our datasets live in memory, where `datasets` names that cache randomly in a
    per-process temp folder and never reuses it, so the hash buys nothing and costs tens of
    seconds to minutes of an epoch. `key` (job, base, parent) stands in for it.
    """
    import trl.trainer.dpo_trainer as dpo_module

    original = dpo_module.hash_module
    dpo_module.hash_module = lambda module: key
    try:
        yield
    finally:
        dpo_module.hash_module = original


@contextlib.contextmanager
def adapters_built_on(device: str | None) -> Iterator[None]:
    """Let TRL's `get_peft_model` build the LoRA layers straight on `device` (None: as PEFT
    does by itself).

    PEFT 0.21 creates every LoRA layer on the host: `nn.Linear`'s own random init, then its
    LoRA init, then a copy to the base layer's card. At r 64 on the seven projections that is
    537M fp32 weights at the 32B shape (161M at 7B) drawn on one CPU core: 0.75 s for 8 of
    the 64 layers on this project's 2-core CI machine, seconds of a job's start. Under
    `torch.device(device)` the same layers are allocated and initialised on the card (the
    same init functions, the card's generator, seeded by `set_seed` like the host's).
    """
    import torch
    import trl.trainer.dpo_trainer as dpo_module

    if device is None:
        yield
        return
    original = dpo_module.get_peft_model

    def build_on_device(*args: Any, **kwargs: Any) -> Any:
        with torch.device(device):
            return original(*args, **kwargs)

    dpo_module.get_peft_model = build_on_device
    try:
        yield
    finally:
        dpo_module.get_peft_model = original


def save_adapter(
    model: Any,
    tokenizer: Any,
    work_dir: Path,
    output_dir: Path,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Only the trained adapter (`default`, not TRL's frozen `ref` copy) and the tokenizer;
    PEFT's README goes to the scratch folder, not into the registry. `state_dict`: the
    gathered LoRA tensors of an FSDP model (its own parameters are shards)."""
    staging = work_dir / "adapter-save"
    if staging.exists():
        shutil.rmtree(staging)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(
        str(staging), selected_adapters=["default"], safe_serialization=True, **extra
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.move(str(staging / name), str(output_dir / name))
    tokenizer.save_pretrained(str(output_dir))


def save_trained_adapter(
    trainer: Any, tokenizer: Any, ctx: JobContext, *, parent: Path | None, processes: int
) -> tuple[Any, str | None]:
    """The trained adapter into ctx.output_dir; returns the PEFT model and the reference's
    adapter name (None: adapters off, the base)."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    reference_adapter = "ref" if "ref" in peft_model.peft_config else None
    if parent is not None and reference_adapter is None:
        raise RuntimeError(
            "TRL did not keep the parent adapter as the reference (no `ref` adapter)"
        )
    if processes > 1:
        # A collective: every rank gathers the LoRA shards, rank 0 keeps the full tensors.
        is_main = process_rank() == 0
        adapter_state = gather_adapter_state(peft_model, "default", keep=is_main)
        if is_main:
            save_adapter(peft_model, tokenizer, ctx.work_dir, ctx.output_dir, adapter_state)
    else:
        save_adapter(peft_model, tokenizer, ctx.work_dir, ctx.output_dir)
    return peft_model, reference_adapter


def heldout_pair_metrics(
    spec: DpoJobSpec,
    ctx: JobContext,
    trainer: Any,
    peft_model: Any,
    reference_adapter: str | None,
    tokenizer: Any,
    choices: SpeedChoices,
    *,
    padded_attention: str,
) -> tuple[dict[str, float], int]:
    """Held-out pair accuracy (training_eval.py) and the number of over-long pairs dropped.
    The held-out pairs are scored in TRL's padded rows, with `padded_attention`."""
    from services.trainer.jobs.training_eval import heldout_metrics

    if ctx.eval_path is None:
        return {}, 0
    if choices.attn_implementation != padded_attention:
        # Trained packed with flex attention, which would compile a kernel per batch shape.
        peft_model.get_base_model().set_attn_implementation(padded_attention)
    # Under FSDP every rank runs the same held-out batches: each forward all-gathers
    # the layers from all ranks, so no rank may skip one.
    rows = read_rows(ctx.eval_path)
    pairs = [tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    kept = [p for p in pairs if p.length <= spec.dpo.max_length]
    if not kept:
        raise DatasetError(
            f"every held-out pair is longer than max_length={spec.dpo.max_length} tokens"
        )
    metrics = heldout_metrics(
        peft_model,
        kept,
        beta=spec.dpo.beta,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=choices.plan.precompute_ref_batch_size,
        device=trainer.accelerator.device,
        reference_adapter=reference_adapter,
        autocast=trainer.accelerator.autocast,
    )
    ctx.log.info(
        "held-out pair accuracy %.3f (reference %.3f), margin %.4f",
        metrics["eval/pair_accuracy"],
        metrics["eval/reference_pair_accuracy"],
        metrics["eval/margin"],
    )
    return metrics, len(pairs) - len(kept)
