"""Projection of stage 1 for 1,000 instructions with Qwen2.5-32B on one H100 (issue 6, item 5).

    python -m bench projection --run runs/projection-sample

Inputs, all stated in the output and in docs/benchmarks.md:
- generation: the token counts a measured small run's manifest holds per step (the tiny
  model: a random model writes until max_tokens, so completions are an upper bound; its
  2k-word tokenizer splits text into more tokens than Qwen's), scaled to `--instructions`,
  at a published vLLM throughput for a 32B model on one H100 (`--gen-tokens-per-s`);
- training: DPO tokens of the run's train pairs (chosen and rejected sequences, prompt
  included), scaled the same way, at the trainer's measured 32B-shape rate on one H100
  (`--train-tokens-per-s`, docs/benchmarks.md item 3).
No GPU is used; nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# GPUStack performance lab, "Optimizing Qwen3-32B Throughput on NVIDIA H100 GPUs": vLLM
# without optimisations, ShareGPT profile, total (input + output) tokens/s on one H100.
# Qwen3-32B has the layer count and width of Qwen2.5-32B (64 x 5120).
PUBLISHED_VLLM_32B_H100_TOKENS_PER_S = 2352.82
# docs/benchmarks.md item 3: the project's DPO job with its defaults at the Qwen2.5-32B shape, one
# H100 80GB (14:03 UTC call, 8-bit Adam moments chosen by `optimizer: auto`).
MEASURED_DPO_32B_TOKENS_PER_S = 1215.0
FIRST_VERSION_HOURS = (2.0 + 1.0, 3.0 + 2.0)  # generation 2-3 h + training 1-2 h (A100)


def _train_tokens(train: Path, tokenizer_dir: Path) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pairs = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
    total = 0
    for pair in pairs:
        for answer in (pair["chosen"], pair["rejected"]):
            total += len(tok(pair["prompt"] + answer, add_special_tokens=False)["input_ids"])
    return len(pairs), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench projection", description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a measured `cai generate` run")
    parser.add_argument("--instructions", type=int, default=1000)
    parser.add_argument(
        "--gen-tokens-per-s", type=float, default=PUBLISHED_VLLM_32B_H100_TOKENS_PER_S
    )
    parser.add_argument("--train-tokens-per-s", type=float, default=MEASURED_DPO_32B_TOKENS_PER_S)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--usd-per-gpu-hour", type=float, default=2.5)
    parser.add_argument("--tokenizer", type=Path, default=Path(".cache/models/tiny"))
    args = parser.parse_args(argv)

    manifest = json.loads((args.run / "manifest.json").read_text())
    accepted = manifest["counts"]["instructions"].get("ok", 0)
    if not accepted:
        print(f"{args.run}: no accepted instructions: nothing to project from")
        return 1
    scale = args.instructions / accepted
    prompt = sum(step["prompt_tokens"] for step in manifest["tokens"].values())
    completion = sum(step["completion_tokens"] for step in manifest["tokens"].values())
    gen_tokens = (prompt + completion) * scale
    gen_s = gen_tokens / args.gen_tokens_per_s
    pairs, pair_tokens = _train_tokens(args.run / "train.jsonl", args.tokenizer)
    train_tokens = pair_tokens * scale * args.epochs
    train_s = train_tokens / args.train_tokens_per_s
    hours = (gen_s + train_s) / 3600
    result = {
        "measured_run": str(args.run),
        "accepted_instructions": accepted,
        "scale": scale,
        "generation": {
            "prompt_tokens_per_instruction": prompt / accepted,
            "completion_tokens_per_instruction": completion / accepted,
            "tokens": gen_tokens,
            "tokens_per_s": args.gen_tokens_per_s,
            "hours": gen_s / 3600,
        },
        "training": {
            "train_pairs_in_run": pairs,
            "tokens": train_tokens,
            "tokens_per_s": args.train_tokens_per_s,
            "hours": train_s / 3600,
        },
        "total_hours": hours,
        "cost_usd": hours * args.usd_per_gpu_hour,
        "first_version_hours": FIRST_VERSION_HOURS,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
