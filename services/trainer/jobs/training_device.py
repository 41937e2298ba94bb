"""Device, dtype, kernel and optimizer decisions for a DPO job: small pure functions, each with
a reason. The memory plan they feed is training_memory.py's; the job (dpo.py) records every
choice with its reason in the job's log and result `config`.
"""

from __future__ import annotations

import importlib.util

from services.trainer.jobs.training_memory import ModelShape, state_bytes

# Above this share of the free memory taken by weights and fp32 LoRA state, `optimizer: auto`
# keeps the Adam moments in 8 bits. 32B with r 64 on one 80 GB card: 74 GB of 84.5 (88%),
# 8.6 GB of it LoRA state (537M trainable parameters); 8-bit moments give back 3.2 GB.
# 7B on the same card: 21%, well under it, so it keeps exact fp32 AdamW.
_EIGHT_BIT_STATE_SHARE = 0.6


class DeviceUnsupportedError(ValueError):
    """The job asks for something this device cannot do (4-bit loading on CPU)."""


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


def bitsandbytes_optimizer_usable() -> bool:
    """bitsandbytes imports and has its 8-bit AdamW (an installed but broken build, e.g. one
    without kernels for this CUDA, fails here and `auto` keeps fp32 AdamW)."""
    try:
        import bitsandbytes

        return hasattr(bitsandbytes.optim, "AdamW8bit")
    except Exception:  # any import-time failure means "not usable", never a failed job
        return False


def choose_optimizer(
    requested: str,
    shape: ModelShape,
    *,
    device: str,
    free_bytes: int | None,
    r: int,
    dtype: str,
    load_in_4bit: bool,
    processes: int,
    eight_bit_usable: bool,
) -> tuple[str, str]:
    """(`adamw` or `adamw_8bit`, why). `auto` keeps exact fp32 AdamW unless weights and the
    fp32 LoRA state would take most of one GPU: then the Adam moments go to 8 bits
    (bitsandbytes' blockwise AdamW8bit, which tracks 32-bit Adam closely) and the memory
    they free goes to activations and headroom. Not under FSDP (sharding is its answer to
    memory, and bitsandbytes' optimizer does not take sharded parameters)."""
    if requested == "adamw":
        return "adamw", "adamw as requested"
    if requested == "adamw_8bit":
        if device != "cuda":
            raise DeviceUnsupportedError(
                "optimizer adamw_8bit needs a CUDA GPU (bitsandbytes); this job runs on CPU: "
                "set optimizer to adamw or auto"
            )
        if processes > 1:
            raise DeviceUnsupportedError(
                "optimizer adamw_8bit is not supported with several processes (FSDP shards "
                "the optimizer state instead): set optimizer to adamw or auto"
            )
        if not eight_bit_usable:
            raise DeviceUnsupportedError(
                "optimizer adamw_8bit needs a working `bitsandbytes` in the trainer's "
                "environment: install it or set optimizer to adamw or auto"
            )
        return "adamw_8bit", "adamw_8bit as requested"
    if device != "cuda" or free_bytes is None or processes > 1:
        return "adamw", "auto: fp32 AdamW (single GPU with tight memory only gets 8-bit moments)"
    share = state_bytes(shape, r, dtype, load_in_4bit, "adamw") / free_bytes
    if share <= _EIGHT_BIT_STATE_SHARE:
        return "adamw", f"auto: fp32 AdamW (weights and LoRA state {share:.0%} of free memory)"
    if not eight_bit_usable:
        return "adamw", (
            f"auto: fp32 AdamW although weights and LoRA state take {share:.0%} of free memory "
            "(bitsandbytes not usable here: 8-bit moments would free memory)"
        )
    return "adamw_8bit", (
        f"auto: 8-bit AdamW moments (weights and fp32 LoRA state would take {share:.0%} of "
        f"free memory, over {_EIGHT_BIT_STATE_SHARE:.0%})"
    )


def use_cudnn_attention(device: str) -> bool:
    """Whether sdpa may pick cuDNN's attention kernels. Off on CUDA: with length-grouped
    batches every step brings new sequence lengths, and cuDNN builds a new execution plan
    for each (~2.7 ms of CPU a call, every layer, forward and backward; the 7B job's GPU sat
    40% idle waiting for it on an H100). PyTorch then picks the flash / memory-efficient
    kernels, which need no plan (measured with dpo_trainer.disable_lora_input_cast: the 7B
    epoch 22% shorter, docs/benchmarks-history.md section 3). CPU: cuDNN is not involved."""
    return False
