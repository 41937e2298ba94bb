"""Hand-written inline SVG charts: grouped bars with error bars, lines, histograms, funnels.

    svg = bar_chart("eval-rules", "Rule success", ["qa", "all"],
                    [BarSeries("base", "#94a3b8", [Bar(0.5, 0.3, 0.7), Bar(0.4, 0.3, 0.5)])])

Why not a plotting library: the report is one self-contained HTML file with no JavaScript and
no downloads, and matplotlib is not a client dependency. Each chart is an `<svg>` with an `id`,
a `<title>` (what a screen reader and the Chromium test read) and labelled axes. Every text
that reaches the SVG goes through `html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# Layout, in SVG user units (the SVG scales to its container's width).
WIDTH = 640
HEIGHT = 300
MARGIN_LEFT = 56
MARGIN_RIGHT = 16
MARGIN_TOP = 36
MARGIN_BOTTOM = 64
FONT = 'font-family="inherit"'

PALETTE = ("#64748b", "#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9")


def stage_color(stage: int) -> str:
    """Stage 0 (the base) is slate; stages 1.. take the accent colours in order."""
    if stage < len(PALETTE):
        return PALETTE[stage]
    return PALETTE[1 + (stage - 1) % (len(PALETTE) - 1)]


@dataclass(frozen=True)
class Bar:
    value: float | None
    low: float | None = None
    high: float | None = None
    note: str = ""  # tooltip text, e.g. "7/12"


@dataclass(frozen=True)
class BarSeries:
    name: str
    color: str
    bars: Sequence[Bar]


@dataclass(frozen=True)
class LineSeries:
    name: str
    color: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class HistSeries:
    name: str
    color: str
    values: Sequence[float]


@dataclass
class _Frame:
    """Plot area and the data -> pixel maps."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: float = WIDTH
    height: float = HEIGHT
    parts: list[str] = field(default_factory=list)

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> float:
        return MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def px(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (x - self.x0) / span * (self.right - self.left)

    def py(self, y: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.bottom - (y - self.y0) / span * (self.bottom - self.top)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick's label with as many decimals as the tick spacing needs (0.005 -> 3)."""
    if len(ticks) < 2:
        return fmt(value)
    step = abs(ticks[1] - ticks[0]) or 1.0
    if step >= 1 and abs(value) >= 1000:
        return fmt(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals, 9) % 1:  # 2.5-type steps need one more digit
        decimals += 1
    return f"{value:.{decimals}f}"


def fmt(value: float) -> str:
    """Short value label: 0.25, 1.5k, 12, 3e-05."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value / 1000:.0f}k"
    if magnitude >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    if magnitude >= 10:
        return f"{value:.0f}"
    if magnitude >= 0.01:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.0e}"


def _open(chart_id: str, title: str, frame: _Frame, description: str = "") -> list[str]:
    cid = escape(chart_id)
    parts = [
        f'<svg id="{cid}" class="chart" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-labelledby="{cid}-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{cid}-title">{escape(title)}</title>',
    ]
    if description:
        parts.append(f"<desc>{escape(description)}</desc>")
    parts.append(f'<text x="{frame.left}" y="20" class="chart-title" {FONT}>{escape(title)}</text>')
    return parts


def _y_axis(frame: _Frame, ticks: Sequence[float], label: str, percent: bool = False) -> list[str]:
    parts = []
    for tick in ticks:
        y = frame.py(tick)
        text = f"{tick * 100:.0f}%" if percent else tick_label(tick, ticks)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(text)}</text>"
        )
    mid = (frame.top + frame.bottom) / 2
    parts.append(
        f'<text x="14" y="{mid:.1f}" transform="rotate(-90 14 {mid:.1f})" text-anchor="middle" '
        f'class="axis-label">{escape(label)}</text>'
    )
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" y2="{frame.bottom}" '
        'class="axis"/>'
    )
    return parts


def _x_label(frame: _Frame, label: str) -> str:
    return (
        f'<text x="{(frame.left + frame.right) / 2:.1f}" y="{frame.height - 8}" '
        f'text-anchor="middle" class="axis-label">{escape(label)}</text>'
    )


def _legend(
    frame: _Frame, items: Sequence[tuple[str, str]], dashed: Sequence[bool] = ()
) -> list[str]:
    parts = ['<g class="legend">']
    x = frame.left
    y = frame.height - 30
    for i, (name, color) in enumerate(items):
        dash = ' stroke-dasharray="4 3"' if i < len(dashed) and dashed[i] else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" '
            f'stroke-width="6"{dash}/>'
        )
        parts.append(f'<text x="{x + 22}" y="{y}" class="legend-text">{escape(name)}</text>')
        x += 30 + 7 * len(name)
    parts.append("</g>")
    return parts


def empty_chart(chart_id: str, title: str, message: str) -> str:
    frame = _Frame(0, 1, 0, 1, height=120)
    parts = _open(chart_id, title, frame)
    parts.append(
        f'<text x="{WIDTH / 2}" y="70" text-anchor="middle" class="empty">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


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
    frame = _Frame(0, len(groups), 0.0, ticks[-1])
    parts = _open(chart_id, title, frame, description)
    parts += _y_axis(frame, ticks, y_label, percent)
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
    parts += _legend(frame, [(s.name, s.color) for s in series])
    parts.append("</svg>")
    return "\n".join(parts)


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
    frame = _Frame(x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1], width=width)
    parts = _open(chart_id, title, frame, description)
    parts += _y_axis(frame, y_ticks, y_label, percent)
    for tick in x_ticks:
        parts.append(
            f'<text x="{frame.px(tick):.1f}" y="{frame.bottom + 16}" text-anchor="middle" '
            f'class="tick">{escape(tick_label(tick, x_ticks))}</text>'
        )
    parts.append(_x_label(frame, x_label))
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
    parts += _legend(frame, [(s.name, s.color) for s in series], [s.dashed for s in series])
    parts.append("</svg>")
    return "\n".join(parts)


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
    frame = _Frame(edges[0], edges[-1], 0, y_ticks[-1])
    parts = _open(chart_id, title, frame, description)
    parts += _y_axis(frame, y_ticks, "count")
    for tick in edges[:: max(1, len(edges) // 7)]:
        parts.append(
            f'<text x="{frame.px(tick):.1f}" y="{frame.bottom + 16}" text-anchor="middle" '
            f'class="tick">{escape(tick_label(tick, edges))}</text>'
        )
    parts.append(_x_label(frame, x_label))
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
    parts += _legend(frame, [(s.name, s.color) for s in series])
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
    frame = _Frame(0, max(count for _, count in steps) or 1, 0, 1, height=height)
    label_width = 110
    span = frame.right - frame.left - label_width - 50
    parts = _open(chart_id, title, frame)
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


__all__ = [
    "PALETTE",
    "Bar",
    "BarSeries",
    "HistSeries",
    "LineSeries",
    "bar_chart",
    "empty_chart",
    "fmt",
    "funnel_chart",
    "histogram",
    "line_chart",
    "nice_ticks",
    "stage_color",
    "tick_label",
]
