"""Report sections about the run itself: the generation funnel, cost and time, examples."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from cai.evaluation.records import EvalRecord, pick_examples
from cai.report import html as h
from cai.report import svg
from cai.report.inputs import RunInputs, StepTiming


def funnel(inputs: RunInputs) -> str:
    stages = [s for s in inputs.trained if s.funnel]
    if not stages:
        return h.section(
            "funnel", "Generation funnel", '<p class="muted">No pipeline files yet.</p>'
        )
    charts = [
        svg.funnel_chart(
            f"chart-funnel-{s.stage}",
            f"{h.stage_name(s.stage).capitalize()}: records kept per step",
            [(f.step, f.ok) for f in s.funnel],
            color=svg.stage_color(s.stage),
        )
        for s in stages
    ]
    # Pivoted: one row per (step, reason), one column per stage, so stages compare at a glance.
    headers = [h.stage_name(s.stage) for s in stages]
    reasons: dict[tuple[str, str], dict[int, int]] = {}
    for s in stages:
        for f in s.funnel:
            for reason, count in f.not_ok.items():
                reasons.setdefault((f.step, reason), {})[s.stage] = count
    rows = [
        [escape(step), escape(reason)] + [str(counts.get(s.stage, 0)) for s in stages]
        for (step, reason), counts in reasons.items()
    ]
    table = (
        h.table(["Step", "Status: reason", *headers], rows, "table-skips")
        if rows
        else '<p class="muted" id="table-skips">Nothing was skipped, rejected or failed.</p>'
    )
    steps: dict[str, dict[int, str]] = {}
    for s in stages:
        for step, t in s.pipeline.tokens.items() if s.pipeline is not None else ():
            steps.setdefault(step, {})[s.stage] = (
                f"{t.prompt_tokens:,} → {t.completion_tokens:,}"
                f' <span class="muted">({t.requests:,} req.)</span>'
            )
    token_rows = [
        [escape(step)] + [cells.get(s.stage, "—") for s in stages] for step, cells in steps.items()
    ]
    tokens = (
        "<h3>Tokens per pipeline step: prompt → completion (the servers' usage)</h3>"
        + h.table(["Step", *headers], token_rows, "table-tokens")
        if token_rows
        else ""
    )
    return h.section(
        "funnel", "Generation funnel", h.grid(charts) + "<h3>Skip reasons</h3>" + table + tokens
    )


def costs(inputs: RunInputs) -> str:
    timings = inputs.timings
    if not timings:
        return h.section("costs", "Cost and time", '<p class="muted">No step timings yet.</p>')
    steps = list(dict.fromkeys(t.step for t in timings))
    stage_numbers = sorted({t.stage for t in timings})
    series = []
    for number in stage_numbers:
        by_step = {t.step: t for t in timings if t.stage == number}
        series.append(
            svg.BarSeries(
                h.stage_name(number),
                svg.stage_color(number),
                [
                    svg.Bar(by_step[step].wall_s / 60) if step in by_step else svg.Bar(None)
                    for step in steps
                ],
            )
        )
    chart = svg.bar_chart(
        "chart-costs",
        "Wall time per step",
        steps,
        series,
        y_label="minutes",
        percent=False,
        y_max=None,
    )
    totals = []
    for number in stage_numbers:
        mine = [t for t in timings if t.stage == number]
        cost = sum(t.cost_usd for t in mine if t.cost_usd is not None)
        totals.append(svg.Bar(cost, note=f"{sum(t.wall_s for t in mine) / 60:.1f} min"))
    cost_chart = svg.bar_chart(
        "chart-cost-per-stage",
        "Estimated cost per stage (USD)",
        [h.stage_name(n) for n in stage_numbers],
        [svg.BarSeries("cost", svg.PALETTE[3], totals)],
        y_label="USD",
        percent=False,
        y_max=None,
    )

    # Pivoted: one row per step, one column per stage ("minutes · dollars"), totals last.
    def cell(items: Sequence[StepTiming]) -> str:
        if not items:
            return '<span class="muted">—</span>'
        wall = sum(t.wall_s for t in items)
        costs = [t.cost_usd for t in items if t.cost_usd is not None]
        gpu = [t.gpu_s for t in items if t.gpu_s is not None]
        text = h.duration(wall)
        if costs:
            text += f" · ${sum(costs):,.2f}"
        if gpu:
            text += f'<br><span class="muted">{sum(gpu) / 3600:.2f} GPU-h</span>'
        return text

    rows = [
        [escape(step)]
        + [cell([t for t in timings if t.stage == n and t.step == step]) for n in stage_numbers]
        + [cell([t for t in timings if t.step == step])]
        for step in steps
    ]
    rows.append(
        ["<strong>total</strong>"]
        + [f"<strong>{cell([t for t in timings if t.stage == n])}</strong>" for n in stage_numbers]
        + [f"<strong>{cell(timings)}</strong>"]
    )
    table = h.table(
        ["Step", *[h.stage_name(n) for n in stage_numbers], "all stages"], rows, "table-costs"
    )
    return h.section("costs", "Cost and time per step", h.grid([chart, cost_chart]) + table)


def _verdicts(record: EvalRecord | None) -> str:
    if record is None:
        return '<span class="muted">—</span>'
    failed = [name for name, ok in record.rules.items() if not ok]
    margin = f"margin {record.judge_margin:+.2f}" if record.judge_margin is not None else ""
    return (
        h.badge(record.rule_ok, "rules", ", ".join(failed) or "all rules passed")
        + h.badge(
            record.judge_ok,
            "judge",
            margin,
            f"{record.judge_margin:+.2f}" if record.judge_margin is not None else "",
        )
        + (f'<div class="muted small">{escape(", ".join(failed))}</div>' if failed else "")
    )


def _response(record: EvalRecord | None) -> str:
    if record is None:
        return '<span class="muted">not evaluated</span>'
    if record.status == "failed":
        return f'<span class="warn">failed: {escape(record.reason or "")}</span>'
    text = record.response or "(empty)"
    return f'<div class="response">{escape(text)}</div>'


def examples(inputs: RunInputs) -> str:
    base = inputs.baseline
    latest = next((s for s in reversed(inputs.trained) if s.records), None)
    shown = latest or base
    if shown is None:
        return h.section("examples", "Examples", '<p class="muted">No responses yet.</p>')
    pairs = pick_examples(base.records if base and latest else [], shown.records)
    label = h.stage_name(shown.stage)
    rows = []
    for before, after in pairs:
        row = [
            f'<span class="type">{escape(after.type)}</span>'
            f'<div class="instruction">{escape(after.instruction)}</div>',
        ]
        if latest is not None:
            row += [_response(before), _verdicts(before)]
        row += [_response(after), _verdicts(after)]
        rows.append(row)
    headers = ["Instruction"]
    if latest is not None:
        headers += ["Base response", "Base verdicts"]
    headers += [f"{label.capitalize()} response", f"{label.capitalize()} verdicts"]
    intro = (
        f'<p class="note">Held-out instructions answered by the base and by {escape(label)} '
        "(verdict changes first). Model text is shown verbatim.</p>"
    )
    return h.section("examples", "Examples", intro + h.table(headers, rows, "table-examples"))


__all__ = ["costs", "examples", "funnel"]
