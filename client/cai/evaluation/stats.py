"""Small, exact statistics for the evaluation: Wilson intervals, McNemar's exact test, lengths.

    >>> wilson_interval(8, 10)
    Interval(successes=8, n=10, rate=0.8, low=0.490..., high=0.943..., confidence=0.95)
    >>> mcnemar_exact([True, False, True], [False, False, True]).p_value
    1.0

Pure functions on plain Python values (no numpy, no scipy): they run in the client, which
installs neither. Why these tests: a success rate from tens of held-out instructions has
wide uncertainty, and the Wilson score interval stays inside [0, 1] and keeps its coverage
for small n and rates near 0 or 1, where the normal ("Wald") interval does not. Stages are
compared on the *same* instructions, so the outcomes are paired: McNemar's test uses only the
discordant pairs (one side succeeded, the other failed), and its exact form (a two-sided
binomial test with p = 1/2) is right for the small counts we have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from pydantic import BaseModel, Field


class Interval(BaseModel):
    """A success rate with its Wilson score interval."""

    successes: int = Field(ge=0)
    n: int = Field(ge=0)
    rate: float | None = Field(description="successes / n; None when n is 0.")
    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    confidence: float = Field(gt=0.0, lt=1.0)


class McNemarResult(BaseModel):
    """Paired comparison of two success vectors over the same items (a = reference, b = new).

    `b_only` counts items where only the new side succeeded, `a_only` where only the reference
    did; the test is two-sided and exact (binomial on the `a_only + b_only` discordant items).
    """

    n: int = Field(description="Paired items compared.")
    both: int
    neither: int
    a_only: int = Field(description="Reference succeeded, new failed.")
    b_only: int = Field(description="New succeeded, reference failed.")
    p_value: float = Field(ge=0.0, le=1.0)

    @property
    def difference(self) -> float | None:
        """Rate(new) - rate(reference): (b_only - a_only) / n."""
        return (self.b_only - self.a_only) / self.n if self.n else None


class LengthStats(BaseModel):
    """Distribution summary of a list of lengths (characters or tokens)."""

    n: int
    mean: float | None = None
    median: float | None = None
    p90: float | None = None
    min: float | None = None
    max: float | None = None


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for `successes` out of `n` (the whole [0, 1] when n is 0)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return Interval(successes=0, n=0, rate=None, low=0.0, high=1.0, confidence=confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Clamp: rounding can push the bounds a hair outside [0, 1] at p = 0 or 1.
    return Interval(
        successes=successes,
        n=n,
        rate=p,
        low=max(0.0, centre - half),
        high=min(1.0, centre + half),
        confidence=confidence,
    )


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (p = 1/2).

    The distribution is symmetric, so the two-sided value is twice the smaller tail.
    """
    if n == 0:
        return 1.0
    low = min(k, n - k)
    # Exact integer arithmetic, then one division: no underflow for large n.
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_exact(reference: Sequence[bool], new: Sequence[bool]) -> McNemarResult:
    """McNemar's exact test of paired successes; `reference[i]` and `new[i]` are the same item."""
    if len(reference) != len(new):
        raise ValueError(
            f"paired vectors differ in length ({len(reference)} vs {len(new)}): "
            "compare the same instructions on both sides"
        )
    both = sum(1 for a, b in zip(reference, new, strict=True) if a and b)
    neither = sum(1 for a, b in zip(reference, new, strict=True) if not a and not b)
    a_only = sum(1 for a, b in zip(reference, new, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(reference, new, strict=True) if b and not a)
    return McNemarResult(
        n=len(reference),
        both=both,
        neither=neither,
        a_only=a_only,
        b_only=b_only,
        p_value=binomial_two_sided_p(b_only, a_only + b_only),
    )


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def length_stats(lengths: Sequence[float]) -> LengthStats:
    """Mean, median, 90th percentile, min and max of `lengths` (all None when empty)."""
    if not lengths:
        return LengthStats(n=0)
    return LengthStats(
        n=len(lengths),
        mean=sum(lengths) / len(lengths),
        median=quantile(lengths, 0.5),
        p90=quantile(lengths, 0.9),
        min=min(lengths),
        max=max(lengths),
    )


__all__ = [
    "Interval",
    "LengthStats",
    "McNemarResult",
    "binomial_two_sided_p",
    "length_stats",
    "mcnemar_exact",
    "quantile",
    "wilson_interval",
]
