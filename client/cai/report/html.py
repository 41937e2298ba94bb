"""Small HTML helpers of the report: numbers, intervals, tests, badges, tables, sections.

Every helper escapes what it is given as text; the cells passed to `table` are HTML already.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from cai.evaluation.records import Comparison, EvalSummary
from cai.evaluation.stats import Interval
from cai.report.inputs import RunInputs, StageInputs


def pct(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def interval(interval: Interval | None) -> str:
    if interval is None or interval.rate is None:
        return '<span class="muted">—</span>'
    return (
        f"<strong>{pct(interval.rate)}</strong> "
        f'<span class="ci">[{pct(interval.low)}, {pct(interval.high)}]</span> '
        f'<span class="muted">{interval.successes}/{interval.n}</span>'
    )


def p_value(p: float) -> str:
    text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    cls = "sig" if p < 0.05 else "muted"
    return f'<span class="{cls}">{text}</span>'


def comparison(comparison: Comparison | None, which: str) -> str:
    if comparison is None:
        return '<span class="muted">—</span>'
    test = comparison.rules if which == "rules" else comparison.judge
    if test is None or test.difference is None:
        return '<span class="muted">—</span>'
    delta = test.difference * 100
    # Colour only a change the paired test supports; the rest reads as noise, as it is.
    significant = test.p_value < 0.05
    arrow = ("up" if delta > 0 else "down" if delta < 0 else "flat") if significant else "flat"
    return (
        f'<span class="delta {arrow}">{delta:+.0f} pts</span> '
        f'<span class="muted">(+{test.b_only} / −{test.a_only})</span> {p_value(test.p_value)}'
    )


def stage_name(stage: int) -> str:
    return "base" if stage == 0 else f"stage {stage}"


def badge(ok: bool | None, label: str, title: str = "", extra: str = "") -> str:
    if ok is None:
        return f'<span class="badge none" title="{escape(title)}">{escape(label)} —</span>'
    cls, mark = ("ok", "✓") if ok else ("bad", "✗")
    tail = f" {escape(extra)}" if extra else ""
    return f'<span class="badge {cls}" title="{escape(title)}">{escape(label)} {mark}{tail}</span>'


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<table id="{escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def summaries(inputs: RunInputs) -> list[tuple[StageInputs, EvalSummary]]:
    return [(s, s.summary) for s in inputs.stages if s.summary is not None]


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{body}</section>'


def grid(charts: Sequence[str], columns: int = 2) -> str:
    figures = "".join(f"<figure>{c}</figure>" for c in charts)
    return f'<div class="charts cols-{columns}">{figures}</div>'


__all__ = [
    "badge",
    "comparison",
    "duration",
    "grid",
    "interval",
    "num",
    "p_value",
    "pct",
    "section",
    "stage_name",
    "summaries",
    "table",
]
