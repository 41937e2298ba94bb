"""Line charts: one polyline per series (training curves, figures per stage)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from cai.report.svg.canvas import WIDTH, Frame, empty_chart, legend, open_svg, x_axis_label, y_axis
from cai.report.svg.scale import fmt, nice_ticks, tick_label
from cai.report.svg.series import LineSeries


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[LineSeries],
    *,
    x_label: str = "step",
    y_label: str = "",
    percent: bool = False,
    y_range: tuple[float, float] | None = None,
    description: str = "",
    width: int = WIDTH,
) -> str:
    """One polyline per series (points drawn too when there are few).

    A narrower `width` (user units) keeps labels legible where charts sit three abreast.
    """
    points = [p for s in series for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not points:
        return empty_chart(chart_id, title, "no data yet")
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    low, high = y_range if y_range is not None else (min(ys), max(ys))
    y_ticks = nice_ticks(low, high)
    x_ticks = nice_ticks(min(xs), max(xs), count=6)
    frame = Frame(x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1], width=width)
    parts = open_svg(chart_id, title, frame, description)
    parts += y_axis(frame, y_ticks, y_label, percent)
    for tick in x_ticks:
        parts.append(
            f'<text x="{frame.px(tick):.1f}" y="{frame.bottom + 16}" text-anchor="middle" '
            f'class="tick">{escape(tick_label(tick, x_ticks))}</text>'
        )
    parts.append(x_axis_label(frame, x_label))
    for s in series:
        good = [p for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
        if not good:
            continue
        path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in good)
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        parts.append(
            f'<polyline class="line" points="{path}" stroke="{s.color}" fill="none"{dash}>'
            f"<title>{escape(s.name)}</title></polyline>"
        )
        if len(good) <= 40:
            for x, y in good:
                parts.append(
                    f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5" '
                    f'fill="{s.color}"><title>{escape(f"{s.name}: step {fmt(x)} = {y:.4g}")}'
                    "</title></circle>"
                )
    parts += legend(frame, [(s.name, s.color) for s in series], [s.dashed for s in series])
    parts.append("</svg>")
    return "\n".join(parts)
