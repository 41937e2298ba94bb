"""Markdown tables of a finished `cai run` folder, for a results page (docs/results.md).

    python scripts/results_tables.py runs/real-cpu-gemma3-270m > /tmp/tables.md

Every figure is read from the run's own files (stages/<N>/eval_summary.json, judge_check.json,
stages/<N>/manifest.json, eval.jsonl, steps.jsonl), so the page can be checked against them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cai.evaluation.records import EvalRecord, EvalSummary, JudgeCheck
from cai.evaluation.stats import Interval, McNemarResult

EXAMPLES = 5
CLIP = 220


def _ci(interval: Interval | None) -> str:
    if interval is None or interval.rate is None:
        return "—"
    return (
        f"{interval.rate:.0%} [{interval.low:.0%}, {interval.high:.0%}] "
        f"({interval.successes}/{interval.n})"
    )


def _mcnemar(result: McNemarResult | None) -> str:
    if result is None:
        return "—"
    return f"+{result.b_only} / −{result.a_only}, p = {result.p_value:.2f}"


def _clip(text: str | None) -> str:
    flat = " ".join((text or "").split()).replace("|", "\\|")
    return flat if len(flat) <= CLIP else flat[: CLIP - 1] + "…"


def stage_table(summaries: list[EvalSummary]) -> str:
    rows = [
        "| stage | model | rules ok [95% CI] | judge ok [95% CI] | rules vs base (McNemar) "
        "| judge vs base (McNemar) | held-out pair accuracy [95% CI] | mean chars / tokens "
        "| truncated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        pair = s.pair_accuracy
        pair_text = (
            "—"
            if pair is None or pair.accuracy is None
            else f"{_ci(pair.interval)} vs {pair.reference_model}"
        )
        vs = s.vs_base
        rows.append(
            f"| {'base' if s.stage == 0 else s.stage} | {s.model} | {_ci(s.rules.get('all'))} "
            f"| {_ci(s.judge.get('all'))} | {_mcnemar(vs.rules if vs else None)} "
            f"| {_mcnemar(vs.judge if vs else None)} | {pair_text} "
            f"| {s.length_chars.mean or 0:.0f} / {s.length_tokens.mean or 0:.0f} | {s.truncated} |"
        )
    return "\n".join(rows)


def type_table(summaries: list[EvalSummary]) -> str:
    kinds = [k for k in summaries[0].rules if k != "all"]
    head = "| type | " + " | ".join(f"rules {s.stage}" for s in summaries) + " |"
    rows = [head, "|---|" + "---|" * len(summaries)]
    for kind in kinds:
        cells = " | ".join(_ci(s.rules.get(kind)) for s in summaries)
        rows.append(f"| {kind} | {cells} |")
    return "\n".join(rows)


def judge_lines(check: JudgeCheck) -> str:
    lines = [
        f"- verdict: **{check.verdict}**",
        f"- pairwise agreement (good answer's margin above its corrupted copy's): "
        f"{_ci(check.agreement.interval)} over {check.agreement.pairs} pairs",
    ]
    for kind, agreement in check.agreement_by_kind.items():
        lines.append(f"  - {kind}: {_ci(agreement.interval)}")
    lines.append(f"- absolute accuracy (good ok and corrupted not ok): {_ci(check.accuracy)}")
    bias = check.position_bias
    lines.append(
        f"- position bias: the two A/B orders disagree on {_ci(bias.order_disagrees)} of answers; "
        f"mean log P(A) − log P(B) = {bias.prefers_a_nats:+.2f} nats"
    )
    return "\n".join(lines)


def funnel_table(run_dir: Path, stages: list[int]) -> str:
    rows = ["| stage | funnel (ok / written, per step) | skip reasons |", "|---|---|---|"]
    for number in stages:
        path = run_dir / "stages" / str(number) / "manifest.json"
        if not path.exists():
            continue
        manifest: dict[str, Any] = json.loads(path.read_text())
        counts: dict[str, dict[str, int]] = manifest.get("counts") or {}
        text = " → ".join(
            f"{step} {by_status.get('ok', 0)}/{sum(by_status.values())}"
            for step, by_status in counts.items()
        )
        skips = ", ".join(f"{k} {v}" for k, v in (manifest.get("skip_reasons") or {}).items())
        rows.append(f"| {number} | {text} | {skips or '—'} |")
    return "\n".join(rows)


def examples_table(run_dir: Path, stages: list[int]) -> str:
    records = [
        EvalRecord.model_validate_json(line)
        for line in (run_dir / "eval.jsonl").read_text().splitlines()
        if line.strip()
    ]
    by_stage = {n: {r.instruction_id: r for r in records if r.stage == n} for n in stages}
    ids = sorted(by_stage[stages[0]])
    # One per type first, then by id: deterministic, not picked by outcome.
    picked: list[str] = []
    for kind in ("qa", "completion", "generation", "response"):
        picked += [i for i in ids if by_stage[stages[0]][i].type == kind][:1]
    picked += [i for i in ids if i not in picked][: EXAMPLES - len(picked)]
    head = "| instruction | " + " | ".join("base" if n == 0 else f"stage {n}" for n in stages)
    rows = [head + " |", "|---|" + "---|" * len(stages)]
    for iid in picked[:EXAMPLES]:
        cells = []
        for n in stages:
            r = by_stage[n].get(iid)
            mark = "—" if r is None else ("rules ✓" if r.rule_ok else "rules ✗")
            cells.append(f"{_clip(r.response if r else None)} ({mark})")
        instruction = _clip(by_stage[stages[0]][iid].instruction)
        rows.append(f"| {instruction} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    stage_dirs = sorted(
        int(p.name) for p in (run_dir / "stages").iterdir() if (p / "eval_summary.json").exists()
    )
    if not stage_dirs:
        sys.exit(f"{run_dir}: no stages/<N>/eval_summary.json; is the run finished?")
    summaries = [
        EvalSummary.model_validate_json(
            (run_dir / "stages" / str(n) / "eval_summary.json").read_text()
        )
        for n in stage_dirs
    ]
    print("### Held-out evaluation\n")
    print(stage_table(summaries) + "\n")
    print("### Rule success by instruction type\n")
    print(type_table(summaries) + "\n")
    check_file = run_dir / "judge_check.json"
    if check_file.exists():
        print("### The judge on hand-checkable cases\n")
        print(judge_lines(JudgeCheck.model_validate_json(check_file.read_text())) + "\n")
    print("### Pipeline funnel per stage\n")
    print(funnel_table(run_dir, [n for n in stage_dirs if n > 0]) + "\n")
    print("### Examples (the first held-out item of each type, then by id)\n")
    print(examples_table(run_dir, stage_dirs))


if __name__ == "__main__":
    main()
