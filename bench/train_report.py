"""Figures and tables of the training benchmark, from the runs' raw results.

`summarise` turns one shape's runs into the numbers docs/benchmarks.md quotes (tokens/s,
FLOP utilisation, peak memory, padding, speed-up, binned loss curves); `render_markdown`
prints them as the tables pasted there.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Protocol

from bench.train_data import LengthProfile, Pair

LOSS_BINS = 10


class Flops(Protocol):
    def flops(self, tokens: int, completion_tokens: int) -> float: ...


def _binned(curve: list[dict[str, float]], key: str) -> list[dict[str, float] | None]:
    """Mean and standard error of `key` in each tenth of the epoch."""
    bins: list[list[float]] = [[] for _ in range(LOSS_BINS)]
    for point in curve:
        if key in point:
            index = min(LOSS_BINS - 1, int(point.get("epoch", 0.0) * LOSS_BINS - 1e-9))
            bins[max(0, index)].append(point[key])
    out: list[dict[str, float] | None] = []
    for values in bins:
        if not values:
            out.append(None)
            continue
        sem = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        out.append({"mean": statistics.fmean(values), "sem": sem, "n": float(len(values))})
    return out


def _lengths(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": statistics.fmean(values), "max": max(values)}


def extrapolated_epoch(result: dict[str, Any], epoch_tokens: int) -> float:
    """A plain run stopped after its first steps (`--plain-steps`): its whole epoch, taken as
    its time to the end of step 1 (construction, TRL's dataset work, the first kernels) plus
    its later steps' time per token over the epoch's remaining tokens. Steps cost in
    proportion to their tokens at these lengths (their tokens are drawn from one profile)."""
    prefix = result["prefix"]
    later_seconds = result["wall_seconds"] - prefix["to_step1_seconds"]
    later_tokens = prefix["tokens"] - prefix["step1_tokens"]
    remaining = epoch_tokens - prefix["step1_tokens"]
    return float(prefix["to_step1_seconds"] + later_seconds * remaining / later_tokens)


def summarise(
    *,
    shape_name: str,
    pairs: list[Pair],
    profile: LengthProfile,
    flops: Flops,
    peak_flops: float | None,
    results: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    tokens = sum(p.tokens for p in pairs)
    completion = sum(p.completion_tokens for p in pairs)
    epoch_flops = flops.flops(tokens, completion)
    runs: dict[str, Any] = {}
    for name, result in results.items():
        run = dict(result)
        if result.get("prefix") and "error" not in result:
            run["measured_wall_seconds"] = result["wall_seconds"]
            run["wall_seconds"] = extrapolated_epoch(result, tokens)
            run["extrapolated"] = True
        wall = run.get("wall_seconds")
        if wall and "error" not in result:
            run["tokens_per_second"] = tokens / wall
            run["model_flops"] = epoch_flops
            if peak_flops:
                run["flop_utilisation"] = epoch_flops / wall / peak_flops
        for phase, counts in (result.get("padding") or {}).items():
            if counts.get("tokens"):
                run.setdefault("padded_positions_per_token", {})[phase] = (
                    counts["positions"] / counts["tokens"]
                )
        packing = (result.get("config") or {}).get("packing") or {}
        positions = (result.get("padding") or {}).get("train", {}).get("positions")
        if packing.get("enabled") and positions and wall and peak_flops and "error" not in result:
            # The work the packed job really does: each prompt once, flex padding included.
            run["work_flop_utilisation"] = flops.flops(positions, completion) / wall / peak_flops
        if result.get("heldout"):
            accuracy, count = (
                result["heldout"]["eval/pair_accuracy"],
                result["heldout"]["eval/pairs"],
            )
            run["heldout"] = {
                **result["heldout"],
                "eval/pair_accuracy_sem": math.sqrt(accuracy * (1 - accuracy) / count),
            }
        curve = result.get("curve") or []
        run["loss_bins"] = _binned(curve, "loss")
        run["accuracy_bins"] = _binned(curve, "rewards/accuracies")
        runs[name] = run
    summary: dict[str, Any] = {
        "shape": shape_name,
        "pairs": len(pairs),
        "tokens": tokens,
        "completion_tokens": completion,
        "epoch_model_flops": epoch_flops,
        "length_profile": profile.__dict__,
        "prompt_tokens": _lengths([len(p.prompt) for p in pairs]),
        "chosen_tokens": _lengths([len(p.chosen) for p in pairs]),
        "rejected_tokens": _lengths([len(p.rejected) for p in pairs]),
        "runs": runs,
    }
    plain = runs.get("plain", {}).get("tokens_per_second")
    project = runs.get("project", {}).get("tokens_per_second")
    if plain and project:
        summary["speedup"] = project / plain
    for kind, key in (("project-warm", "speedup_warm"), ("project-fixed", "speedup_fixed")):
        other = runs.get(kind, {}).get("tokens_per_second")
        if plain and other:
            summary[key] = other / plain
    return summary


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _packed(config: dict[str, Any], run: dict[str, Any]) -> str:
    packing = config.get("packing") or {}
    if not packing.get("enabled"):
        return "no"
    reference = "pre-pass" if config.get("precompute_ref_log_probs") else "in step"
    return f"yes, reference {reference} ({_fmt(run.get('work_flop_utilisation'), '.1%')})"


def render_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, shape in report["shapes"].items():
        lines.append(
            f"### {name} shape: {shape['pairs']} pairs, {shape['tokens']:,} tokens "
            f"(device {report['device']})"
        )
        lines.append("")
        lines.append(
            "| run | epoch s | pre-pass s | tokens/s | FLOP util. | peak alloc GB | "
            "peak reserved GB | micro-batch | checkpointing | Liger | optimizer | padded/real | "
            "packed (work FLOP util.) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for run_name, run in shape["runs"].items():
            config = run.get("config") or {}
            padding = run.get("padded_positions_per_token", {}).get("train")
            if "error" in run:
                lines.append(f"| {run_name} | failed: {run['error'][:120]} |||||||||||| ")
                continue
            prefix = run.get("prefix")
            stopped = f" (extrapolated from {prefix['steps']} steps)" if prefix else ""
            lines.append(
                f"| {run_name} | {_fmt(run.get('wall_seconds'), '.1f')}{stopped} "
                f"| {_fmt(run.get('prepass_seconds'), '.1f')} "
                f"| {_fmt(run.get('tokens_per_second'), ',.0f')} "
                f"| {_fmt(run.get('flop_utilisation'), '.1%')} "
                f"| {_fmt(run.get('peak_allocated_gb'), '.1f')} "
                f"| {_fmt(run.get('peak_reserved_gb'), '.1f')} "
                f"| {config.get('micro_batch')} | {config.get('gradient_checkpointing')} "
                f"| {config.get('use_liger_kernel')} | {config.get('optimizer', 'adamw')} "
                f"| {_fmt(padding, '.2f')} | {_packed(config, run)} |"
            )
        if "speedup" in shape:
            lines.append("")
            lines.append(f"Speed-up project / plain: **{shape['speedup']:.2f}×**")
        for kind in ("warm", "fixed"):
            if f"speedup_{kind}" in shape:
                lines.append("")
                ratio = shape[f"speedup_{kind}"]
                lines.append(f"Speed-up project-{kind} / plain: **{ratio:.2f}×**")
        heldout = {n: r["heldout"] for n, r in shape["runs"].items() if r.get("heldout")}
        if heldout:
            lines.append("")
            scores = ", ".join(
                f"{n} {h['eval/pair_accuracy']:.3f} ± {h['eval/pair_accuracy_sem']:.3f} "
                f"(margin {h['eval/margin']:.4f})"
                for n, h in heldout.items()
            )
            pairs = int(next(iter(heldout.values()))["eval/pairs"])
            lines.append(f"Held-out pair accuracy ({pairs} pairs, ± binomial s.e.): {scores}")
        lines.append("")
        lines.append("Loss (mean ± s.e.m.) by tenth of the epoch:")
        lines.append("")
        names = list(shape["runs"])
        lines.append("| tenth | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for index in range(LOSS_BINS):
            cells = []
            for run_name in names:
                bins = shape["runs"][run_name].get("loss_bins") or []
                cell = bins[index] if index < len(bins) else None
                cells.append("—" if cell is None else f"{cell['mean']:.4f} ± {cell['sem']:.4f}")
            lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
