"""What a chart draws: its data series, and the colours stages keep across every chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
