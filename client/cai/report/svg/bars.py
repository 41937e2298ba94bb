"""Bar charts: grouped vertical bars with error bars, and the horizontal pipeline funnel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from cai.report.svg.canvas import MARGIN_TOP, Frame, empty_chart, legend, open_svg, y_axis
from cai.report.svg.scale import fmt, nice_ticks
from cai.report.svg.series import PALETTE, Bar, BarSeries


def bar_chart(
    chart_id: str,
    title: str,
    groups: Sequence[str],
    series: Sequence[BarSeries],
    *,
    y_label: str = "success rate",
    percent: bool = True,
    y_max: float | None = 1.0,
    description: str = "",
) -> str:
    """Grouped bars (one group per category, one bar per series) with error bars low..high."""
    values = [
        v
        for s in series
        for b in s.bars
        for v in (b.value, b.high)
        if v is not None and math.isfinite(v)
    ]
    if not groups or not values:
        return empty_chart(chart_id, title, "no data yet")
    top = y_max if y_max is not None else max(values) * 1.1 or 1.0
    ticks = nice_ticks(0.0, top)
    frame = Frame(0, len(groups), 0.0, ticks[-1])
    parts = open_svg(chart_id, title, frame, description)
    parts += y_axis(frame, ticks, y_label, percent)
    group_width = (frame.right - frame.left) / len(groups)
    bar_width = min(36.0, group_width * 0.8 / max(1, len(series)))
    for g, group in enumerate(groups):
        centre = frame.left + group_width * (g + 0.5)
        first = centre - bar_width * len(series) / 2
        for k, s in enumerate(series):
            bar = s.bars[g] if g < len(s.bars) else Bar(None)
            x = first + k * bar_width
            if bar.value is None:
                continue
            y = frame.py(bar.value)
            label = f"{s.name} · {group}: " + (
                f"{bar.value * 100:.0f}%" if percent else fmt(bar.value)
            )
            if bar.low is not None and bar.high is not None:
                label += (
                    f" [{bar.low * 100:.0f}%, {bar.high * 100:.0f}%]"
                    if percent
                    else f" [{fmt(bar.low)}, {fmt(bar.high)}]"
                )
            if bar.note:
                label += f" ({bar.note})"
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{bar_width - 2:.1f}" '
                f'height="{max(0.0, frame.bottom - y):.1f}" fill="{s.color}" rx="2">'
                f"<title>{escape(label)}</title></rect>"
            )
            if bar.low is not None and bar.high is not None:
                cx = x + bar_width / 2
                ylo, yhi = frame.py(bar.low), frame.py(bar.high)
                parts.append(
                    f'<path class="errorbar" d="M{cx:.1f},{ylo:.1f}V{yhi:.1f}'
                    f'M{cx - 4:.1f},{ylo:.1f}h8M{cx - 4:.1f},{yhi:.1f}h8"/>'
                )
        parts.append(
            f'<text x="{centre:.1f}" y="{frame.bottom + 16}" text-anchor="middle" class="tick">'
            f"{escape(group)}</text>"
        )
    parts += legend(frame, [(s.name, s.color) for s in series])
    parts.append("</svg>")
    return "\n".join(parts)


def funnel_chart(
    chart_id: str, title: str, steps: Sequence[tuple[str, int]], *, color: str = PALETTE[1]
) -> str:
    """Horizontal bars, one per pipeline step, widths proportional to the record counts."""
    if not steps:
        return empty_chart(chart_id, title, "no pipeline data")
    row = 26
    height = MARGIN_TOP + row * len(steps) + 12
    frame = Frame(0, max(count for _, count in steps) or 1, 0, 1, height=height)
    label_width = 110
    span = frame.right - frame.left - label_width - 50
    parts = open_svg(chart_id, title, frame)
    for i, (name, count) in enumerate(steps):
        y = MARGIN_TOP + i * row
        width = span * count / frame.x1 if frame.x1 else 0
        parts.append(
            f'<text x="{frame.left + label_width - 8}" y="{y + 16}" text-anchor="end" '
            f'class="tick">{escape(name)}</text>'
        )
        parts.append(
            f'<rect class="funnel-bar" x="{frame.left + label_width}" y="{y + 3}" '
            f'width="{max(1.0, width):.1f}" height="{row - 8}" fill="{color}" rx="3">'
            f"<title>{escape(name)}: {count}</title></rect>"
        )
        parts.append(
            f'<text x="{frame.left + label_width + max(1.0, width) + 6:.1f}" y="{y + 16}" '
            f'class="value">{count}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
