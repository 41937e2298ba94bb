"""The backoff every retry waits: both HTTP clients (generator, trainer) and the pipeline's
endpoint pool (cai.pipeline.endpoints)."""

from __future__ import annotations

import random

# Upper bound on one wait, also applied to a server's Retry-After.
MAX_BACKOFF_S = 30.0


def backoff_delay(
    backoff: float,
    attempt: int,
    retry_after: float | None = None,
    *,
    cap: float = MAX_BACKOFF_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After if given,
    else `backoff` doubled per attempt, both capped at `cap`.

    Equal jitter: at least half the backoff, so many callers failing together spread out
    without any of them retrying at once. `rng` makes the jitter reproducible (a seeded run)."""
    if retry_after is not None:
        return min(retry_after, cap)
    base = min(backoff * (2**attempt), cap)
    uniform = rng.uniform if rng is not None else random.uniform
    return base / 2 + uniform(0.0, base / 2)
