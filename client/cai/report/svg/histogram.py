"""Histograms: overlaid series on shared bins (answer lengths, reward margins)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from cai.report.svg.canvas import Frame, empty_chart, legend, open_svg, x_axis_label, y_axis
from cai.report.svg.scale import fmt, nice_ticks, tick_label
from cai.report.svg.series import HistSeries


def histogram(
    chart_id: str,
    title: str,
    series: Sequence[HistSeries],
    *,
    bins: int = 12,
    x_label: str = "",
    description: str = "",
) -> str:
    """Overlaid histograms on shared bins (translucent fills), counts on the y axis."""
    values = [v for s in series for v in s.values if math.isfinite(v)]
    if not values:
        return empty_chart(chart_id, title, "no data yet")
    edges = nice_ticks(min(values), max(values), count=bins)
    if all(float(v).is_integer() for v in values) and edges[1] - edges[0] < 1:
        # Counts of characters or tokens: a bin narrower than 1 would split nothing.
        edges = [float(v) for v in range(math.floor(min(values)), math.floor(max(values)) + 2)]
    counts = []
    for s in series:
        row = [0] * (len(edges) - 1)
        for v in s.values:
            if not math.isfinite(v):
                continue
            index = min(len(row) - 1, max(0, int((v - edges[0]) / (edges[1] - edges[0]))))
            row[index] += 1
        counts.append(row)
    # Counts are whole: at least 4 on the axis keeps the tick step at 1 or more.
    y_ticks = nice_ticks(0, max(4, *(max(row) for row in counts)), count=4)
    frame = Frame(edges[0], edges[-1], 0, y_ticks[-1])
    parts = open_svg(chart_id, title, frame, description)
    parts += y_axis(frame, y_ticks, "count")
    for tick in edges[:: max(1, len(edges) // 7)]:
        parts.append(
            f'<text x="{frame.px(tick):.1f}" y="{frame.bottom + 16}" text-anchor="middle" '
            f'class="tick">{escape(tick_label(tick, edges))}</text>'
        )
    parts.append(x_axis_label(frame, x_label))
    for s, row in zip(series, counts, strict=True):
        for i, count in enumerate(row):
            if not count:
                continue
            x0, x1 = frame.px(edges[i]), frame.px(edges[i + 1])
            y = frame.py(count)
            parts.append(
                f'<rect class="hist" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{x1 - x0 - 1:.1f}" '
                f'height="{frame.bottom - y:.1f}" fill="{s.color}" fill-opacity="0.45" '
                f'stroke="{s.color}"><title>{escape(s.name)}: {count} in '
                f"[{escape(fmt(edges[i]))}, {escape(fmt(edges[i + 1]))})</title></rect>"
            )
    parts += legend(frame, [(s.name, s.color) for s in series])
    parts.append("</svg>")
    return "\n".join(parts)
