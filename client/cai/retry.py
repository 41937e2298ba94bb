"""The backoff both HTTP clients (generator, trainer) wait between retries."""

from __future__ import annotations

import random

# Upper bound on one wait, also applied to a server's Retry-After.
MAX_BACKOFF_S = 30.0


def backoff_delay(backoff: float, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After if given,
    else `backoff` doubled per attempt, both capped at MAX_BACKOFF_S.

    Equal jitter: at least half the backoff, so many callers failing together spread out
    without any of them retrying at once."""
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF_S)
    base = min(backoff * (2**attempt), MAX_BACKOFF_S)
    return base / 2 + random.uniform(0.0, base / 2)
