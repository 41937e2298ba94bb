"""Packed log-probs against the unpacked ones on the device: flex attention's block mask,
bf16 and fp32, forward and LoRA gradients (the CPU tests check the dense-mask path).

    python -m bench train-packing-check --out runs/bench/packing-check

A small Qwen2 (random weights, 28 query heads over 4 KV heads as at 7B, 2 layers) with a
LoRA whose B is random, so the adapter matters. For pairs of varied lengths it computes the
summed completion log-probs (a) one pair at a time in TRL's padded [prompt, answer] rows
with sdpa and (b) all pairs in one packed row with flex attention, and the gradient of the
sum of all log-probs with respect to the LoRA weights both ways. Prints the largest
differences (relative, for gradients) and writes them to `packing_check.json`.
Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from bench.train_throughput import NO_ACCELERATOR


def _model(dtype: Any, attn: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config
    from trl.trainer.utils import add_fused_lm_head

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


def _packed(model: Any, pairs: list[Any], dtype: Any) -> Any:
    import torch

    from services.trainer.jobs.packing import FLEX_BLOCK, attention_mask, pack, packed_logps

    batch = {k: v.cuda() for k, v in pack(pairs, 0, FLEX_BLOCK).items()}
    logps = packed_logps(model, batch, attention_mask(batch, "flex_attention", dtype))
    return torch.stack([logps.chosen, logps.rejected], dim=1).reshape(-1)


def check(dtype_name: str, pairs: list[Any]) -> dict[str, float]:
    import torch

    dtype = getattr(torch, dtype_name)
    results: dict[str, float] = {}
    grads = {}
    sums = {}
    for attn in ("sdpa", "flex_attention"):
        model = _model(dtype, attn)
        model.zero_grad()
        total = _unpacked(model, pairs) if attn == "sdpa" else _packed(model, pairs, dtype)
        total.sum().backward()
        sums[attn] = total.detach()
        grads[attn] = {
            n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None
        }
    diff = (sums["sdpa"] - sums["flex_attention"]).abs()
    results["logp_max_abs_diff"] = float(diff.max())
    results["logp_max_rel_diff"] = float((diff / sums["sdpa"].abs()).max())
    worst = 0.0
    for name, grad in grads["sdpa"].items():
        other = grads["flex_attention"][name]
        worst = max(worst, float((grad - other).norm() / grad.norm().clamp_min(1e-30)))
    results["lora_grad_max_rel_diff"] = worst
    results["pairs"] = float(len(pairs))
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
