"""Benchmarks (issue 6): each figure in docs/benchmarks.md comes from one of these.

    python -m bench                      # every registered benchmark, with its defaults
    python -m bench train-throughput     # one, with its own options (--help)

A benchmark is a module exposing `main(argv: list[str]) -> int`; register it in `BENCHMARKS`
below. A benchmark that needs hardware the machine lacks says so and exits 0: it never
prints an invented figure.
"""

from __future__ import annotations

# name -> module; modules are imported only when their benchmark runs (heavy imports).
BENCHMARKS: dict[str, str] = {
    "train-throughput": "bench.train_throughput",
    "train-profile": "bench.train_profile",
    "train-packing-check": "bench.train_packing_check",
    "client-overhead": "bench.client_overhead",
    "streaming-efficiency": "bench.streaming_efficiency",
    "hot-swap": "bench.hot_swap",
    "projection": "bench.projection",
}
# Registered but left out of `python -m bench` (and `make bench`) without a name: diagnostics.
DIAGNOSTICS: frozenset[str] = frozenset({"train-profile", "train-packing-check", "projection"})
