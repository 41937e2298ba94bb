"""Packed log-probs against the unpacked ones on the device: flash attention's variable-length
kernel (bf16; it has no fp32 kernel) and flex attention's block mask (bf16 and fp32),
forward and LoRA gradients (the CPU tests check the dense-mask and segment-by-segment paths).

    python -m bench train-packing-check --out runs/bench/packing-check

A small Qwen2 (random weights, 28 query heads over 4 KV heads as at 7B, 2 layers) with a
LoRA whose B is random, so the adapter matters. For pairs of varied lengths it computes the
summed completion log-probs (a) one pair at a time in TRL's padded [prompt, answer] rows
with sdpa and (b) all pairs in one packed row with each packed attention: the job's own
(`packed_varlen.packed_varlen_attention`, `packing.packed_flex_attention`) and transformers'
`flex_attention`, and the gradient of the sum of all log-probs with respect to the LoRA weights. Prints
the largest differences from (a) (relative, for gradients) per packed attention and dtype
and writes them to `packing_check.json`.
Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from bench.train_throughput import NO_ACCELERATOR
from services.trainer.jobs.packing_plan import PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION

PACKED_ATTENTIONS = (PACKED_VARLEN_ATTENTION, PACKED_FLEX_ATTENTION, "flex_attention")
# Flash attention's kernels take bf16 and fp16 only.
HALF_ONLY = frozenset({PACKED_VARLEN_ATTENTION})


def _model(dtype: Any, attn: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config
    from trl.trainer.utils import add_fused_lm_head

    from services.trainer.jobs.packing import register_packed_attentions

    register_packed_attentions()
    config = Qwen2Config(
        hidden_size=896,
        intermediate_size=2048,
        num_hidden_layers=2,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=4096,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    add_fused_lm_head(model)
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    return peft_model


def _unpacked(model: Any, pairs: list[Any]) -> Any:
    import torch

    sums = []
    for pair in pairs:
        for answer in (pair.chosen, pair.rejected):
            ids = torch.tensor([[*pair.prompt, *answer]], device="cuda")
            labels = ids.clone()
            labels[:, : len(pair.prompt)] = -100
            out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
            sums.append(out.log_probs.float().sum())
    return torch.stack(sums)


def _packed(model: Any, pairs: list[Any], dtype: Any, attn: str) -> Any:
    import torch

    from services.trainer.jobs.packing import (
        FLEX_BLOCK,
        attention_mask,
        pack,
        packed_logps,
        takes_block_mask,
    )

    multiple = FLEX_BLOCK if takes_block_mask(attn) else 1
    batch = {k: v.to("cuda") for k, v in pack(pairs, 0, multiple, varlen=True).items()}
    logps = packed_logps(model, batch, attention_mask(batch, attn, dtype))
    return torch.stack([logps.chosen, logps.rejected], dim=1).reshape(-1)


def _sums_and_grads(dtype: Any, attn: str, pairs: list[Any]) -> tuple[Any, dict[str, Any]]:
    model = _model(dtype, attn)
    model.zero_grad()
    total = _unpacked(model, pairs) if attn == "sdpa" else _packed(model, pairs, dtype, attn)
    total.sum().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), grads


def check(dtype_name: str, pairs: list[Any]) -> dict[str, dict[str, float]]:
    import torch

    dtype = getattr(torch, dtype_name)
    sums, grads = _sums_and_grads(dtype, "sdpa", pairs)
    results: dict[str, dict[str, float]] = {}
    for attn in PACKED_ATTENTIONS:
        if attn in HALF_ONLY and dtype == torch.float32:
            continue
        packed_sums, packed_grads = _sums_and_grads(dtype, attn, pairs)
        diff = (sums - packed_sums).abs()
        worst = 0.0
        for name, grad in grads.items():
            other = packed_grads[name]
            worst = max(worst, float((grad - other).norm() / grad.norm().clamp_min(1e-30)))
        results[attn] = {
            "logp_max_abs_diff": float(diff.max()),
            "logp_max_rel_diff": float((diff / sums.abs()).max()),
            "lora_grad_max_rel_diff": worst,
            "pairs": float(len(pairs)),
        }
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench train-packing-check")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/packing-check"))
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_ACCELERATOR)
        return 0
    from services.trainer.jobs.packing import PairIds

    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1, 4096) for _ in range(n)]

    pairs = [
        PairIds(ids(rng.randint(1, 300)), ids(rng.randint(1, 250)), ids(rng.randint(1, 250)))
        for _ in range(12)
    ]
    report = {name: check(name, pairs) for name in ("float32", "bfloat16")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packing_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0
