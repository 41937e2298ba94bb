"""Axis numbers: round tick values for a data range, and short labels for values and ticks.

nice_ticks(0.0, 7.0)           # [0.0, 2.0, 4.0, 6.0, 8.0]
tick_label(0.005, [0, 0.005])  # "0.005"
fmt(1500)                      # "1.5k"
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
