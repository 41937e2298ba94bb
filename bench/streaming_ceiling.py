"""What a client with no overhead could reach on the streaming-efficiency workload.

The efficiency of item 2 has a ceiling below 1.0 that no client can pass: each instruction
is a chain of dependent requests, and at the end of a run the last chains' remaining
requests (and the longest delays among them) leave slots idle. This simulates the same
workload with the client's own cost at zero: the same chain (response, critique, revision,
then the judge queries at once), delays drawn as the stub draws them (log-normal, bounded
at `cap` x the median, scaled by max_tokens), the server serving `slots` requests at once
(first come, first served) and the client keeping at most `concurrency` in flight, picking
the deepest step first as the runner does (then the oldest chain).

    efficiency = (sum of delays / slots) / time of the last answer

The benchmark prints this beside the measured figure, so a shortfall reads as "the
workload's tail" or "the client", not a guess.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass

from tests.support.stub_generator import lognormal_delay


@dataclass(frozen=True)
class Workload:
    instructions: int
    # Each level of a chain: (max_tokens, requests sent at once); a level starts when the
    # previous one has all its answers.
    chain: tuple[tuple[int, int], ...]
    slots: int
    concurrency: int
    median_s: float
    sigma: float
    cap: float | None
    scale_tokens: int


def draw_delay(rng: random.Random, work: Workload, max_tokens: int) -> float:
    """As the stub draws it: its log-normal law, scaled by the request's max_tokens."""
    base = lognormal_delay(rng, work.median_s, work.sigma, work.cap)
    return base * max_tokens / work.scale_tokens


def simulate(work: Workload, seed: int) -> float:
    """Efficiency of one run with a zero-overhead client."""
    rng = random.Random(seed)
    ready: list[tuple[int, int, int]] = []  # (-level, chain, level): deepest level first
    left: dict[int, int] = {}  # answers a chain still waits for at its current level
    for chain in range(work.instructions):
        heapq.heappush(ready, (0, chain, 0))
        left[chain] = 1
    queue: deque[tuple[int, int]] = deque()  # at the server, first come first served
    running: list[tuple[float, int, int]] = []  # (finish time, chain, level)
    now = total = 0.0
    in_flight = 0
    while ready or queue or running:
        while ready and in_flight < work.concurrency:
            _, chain, level = heapq.heappop(ready)
            queue.append((chain, level))
            in_flight += 1
        while queue and len(running) < work.slots:
            chain, level = queue.popleft()
            delay = draw_delay(rng, work, work.chain[level][0])
            total += delay
            heapq.heappush(running, (now + delay, chain, level))
        now, chain, level = heapq.heappop(running)
        in_flight -= 1
        left[chain] -= 1
        if left[chain] == 0 and level + 1 < len(work.chain):
            count = work.chain[level + 1][1]
            left[chain] = count
            for _ in range(count):
                heapq.heappush(ready, (-(level + 1), chain, level + 1))
    return total / work.slots / now if now else 0.0


def ceiling(work: Workload, seeds: int = 5) -> float:
    """Mean efficiency over `seeds` draws."""
    return sum(simulate(work, seed) for seed in range(seeds)) / seeds
