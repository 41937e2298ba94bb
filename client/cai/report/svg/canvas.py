"""The parts every chart shares: the plot frame (data -> pixels), the `<svg>` opening with its
title, the y axis with grid lines, the x axis label, the legend, and the empty chart.

Every text that reaches the SVG goes through `html.escape` here or in the chart drawing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from cai.report.svg.scale import tick_label

# Layout, in SVG user units (the SVG scales to its container's width).
WIDTH = 640
HEIGHT = 300
MARGIN_LEFT = 56
MARGIN_RIGHT = 16
MARGIN_TOP = 36
MARGIN_BOTTOM = 64
FONT = 'font-family="inherit"'


@dataclass
class Frame:
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


def open_svg(chart_id: str, title: str, frame: Frame, description: str = "") -> list[str]:
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


def y_axis(frame: Frame, ticks: Sequence[float], label: str, percent: bool = False) -> list[str]:
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


def x_axis_label(frame: Frame, label: str) -> str:
    return (
        f'<text x="{(frame.left + frame.right) / 2:.1f}" y="{frame.height - 8}" '
        f'text-anchor="middle" class="axis-label">{escape(label)}</text>'
    )


def legend(
    frame: Frame, items: Sequence[tuple[str, str]], dashed: Sequence[bool] = ()
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
    frame = Frame(0, 1, 0, 1, height=120)
    parts = open_svg(chart_id, title, frame)
    parts.append(
        f'<text x="{WIDTH / 2}" y="70" text-anchor="middle" class="empty">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)
