"""Building and finishing the DPO job's trainer: the pieces of dpo.py that touch TRL, PEFT
and transformers internals, each with the reason it exists.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.trainer.jobs.training_data import LengthGroupedSampler

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
