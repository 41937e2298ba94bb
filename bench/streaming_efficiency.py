"""Streaming efficiency (issue 6, item 2): does the runner keep a full vLLM batch busy?

    python -m bench streaming-efficiency                      # ~1 minute a way
    python -m bench streaming-efficiency --instructions 200   # a quick look

The stub (`tests.support.stub_generator`, its own process) answers each request after a
delay drawn from a log-normal distribution (median `--median-s` at `--scale-tokens`
max_tokens, shape `--sigma`), bounded at `--cap` x the median as max_tokens bounds a real
generation, and scaled by the request's `max_tokens`, with at most `--max-in-service`
requests in service at once; the rest queue, like the sequences of a full vLLM batch. The
stub adds up the delays it served.

    efficiency = (sum of delays / max_in_service) / wall time

1.0 means every slot was busy from the first request to the last answer. The project's
runner (records stream from step to step) and the obvious way (`bench.obvious_chain`:
`asyncio.gather` per step, a barrier between steps, where every step waits for its
slowest request) run the same instructions against the same stub in one invocation.
For the runner two walls are reported: the whole run (what a user waits for, including
reading and de-duplicating the instructions and the train/test split) and the generation
phase (first request to last answer). Beside them, the ceiling: what a client with no
overhead would reach on this workload (`bench.streaming_ceiling`), since the last chains'
dependent requests cap every client below 1.0.

Defaults: 2,858 instructions (20,006 completions, the workload of client-overhead), delays
bounded at 4x the median, and 80 requests in flight for the 64 slots (the pipeline's advice:
a little above the server's batch, so its queue never empties while the client turns an
answer around; `--concurrency 64` measures without that queue).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.client_overhead import (
    DEFAULT_OUT,
    _rounded,
    machine,
    make_instructions,
    process_cpu_s,
    quiet_http_logs,
    run_runner,
    runner_config,
    save_result,
    write_instruction_file,
)
from bench.obvious_chain import run_obvious
from bench.streaming_ceiling import Workload, ceiling
from cai.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)

GOAL = 0.95


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench streaming-efficiency", description=__doc__
    )
    parser.add_argument("--instructions", type=int, default=2858)
    parser.add_argument("--median-s", type=float, default=0.25, help="median delay at scale")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-normal shape (tail)")
    parser.add_argument(
        "--cap",
        type=float,
        default=4.0,
        help="bound each delay at CAP x the median (a generation stops at max_tokens); "
        "0: unbounded",
    )
    parser.add_argument("--scale-tokens", type=int, default=384, help="max_tokens of the median")
    parser.add_argument("--max-in-service", type=int, default=64, help="the stub's batch")
    parser.add_argument("--concurrency", type=int, default=80, help="requests in flight, both ways")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    parser.add_argument("--skip-obvious", action="store_true", help="only the project's runner")
    parser.add_argument(
        "--no-aiohttp",
        dest="aiohttp",
        action="store_false",
        help="skip the runner on an aiohttp transport (the fix client-overhead measures)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from tests.support.stub_generator import StubServer

    args = parse_args(argv)
    quiet_http_logs()
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    cap = args.cap or None
    delay = f"lognormal:{args.median_s}:{args.sigma}" + (f":{cap}" if cap else "")
    result: dict[str, Any] = {
        "benchmark": "streaming-efficiency",
        "command": "python -m bench streaming-efficiency " + " ".join(argv),
        "machine": machine(),
        "instructions": args.instructions,
        "stub": {
            "delay": delay,
            "delay_scale_tokens": args.scale_tokens,
            "max_in_service": args.max_in_service,
        },
        "concurrency": args.concurrency,
        "goal": GOAL,
    }
    slots = args.max_in_service
    try:
        rows = make_instructions(args.instructions)
        write_instruction_file(work / "instructions.jsonl", rows)
        with StubServer(
            delay=delay, delay_scale_tokens=args.scale_tokens, max_in_service=slots
        ) as stub:
            assert stub.process is not None
            config = runner_config(
                stub.base_url, work / "instructions.jsonl", concurrency=args.concurrency
            )
            workload = Workload(
                instructions=args.instructions,
                chain=chain_levels(config),
                slots=slots,
                concurrency=args.concurrency,
                median_s=args.median_s,
                sigma=args.sigma,
                cap=cap,
                scale_tokens=args.scale_tokens,
            )
            result["ceiling"] = round(ceiling(workload), 3)
            print(
                f"ceiling (a client with no overhead, same workload, mean of 5 draws): "
                f"{result['ceiling']:.3f}"
            )
            variants = [("runner", "keepalive")] + (
                [("runner_aiohttp", "aiohttp")] if args.aiohttp else []
            )
            for key, transport in variants:
                stub.reset_stats()
                cpu0 = time.process_time()
                ours = asyncio.run(run_runner(config, work / key, transport=transport))
                served = stub.stats()
                ours["transport"] = transport
                ours["client_cpu_s"] = time.process_time() - cpu0
                ours.update(_served(served, slots))
                ours["efficiency"] = served["sum_delay_s"] / slots / ours["wall_s"]
                ours["generation_efficiency"] = served["sum_delay_s"] / slots / ours["generation_s"]
                result[key] = _rounded(ours)
                print(
                    f"{key} ({transport} transport): {served['completions']} completions, ideal "
                    f"{ours['ideal_s']:.1f}s, wall {ours['wall_s']:.1f}s -> efficiency "
                    f"{ours['efficiency']:.3f} (generation phase {ours['generation_s']:.1f}s -> "
                    f"{ours['generation_efficiency']:.3f}; before first request "
                    f"{ours['before_first_request_s']:.1f}s, after last answer "
                    f"{ours['after_last_answer_s']:.1f}s; client CPU {ours['client_cpu_s']:.1f}s)"
                )
            if not args.skip_obvious:
                stub.reset_stats()
                cpu0 = time.process_time()
                (work / "obvious").mkdir()
                stats = asyncio.run(
                    run_obvious(
                        config, rows, stub.base_url, work / "obvious", concurrency=args.concurrency
                    )
                )
                served = stub.stats()
                obvious: dict[str, Any] = {
                    "wall_s": stats.wall_s,
                    "step_wall_s": stats.step_wall_s,
                    "client_cpu_s": time.process_time() - cpu0,
                    **_served(served, slots),
                }
                obvious["efficiency"] = served["sum_delay_s"] / slots / stats.wall_s
                result["obvious"] = _rounded(obvious)
                print(
                    f"obvious way (barrier per step): {served['completions']} completions, "
                    f"ideal {obvious['ideal_s']:.1f}s, wall {stats.wall_s:.1f}s -> efficiency "
                    f"{obvious['efficiency']:.3f} (client CPU {obvious['client_cpu_s']:.1f}s)"
                )
            # the stub process is still alive here: its CPU is a sanity check, not a figure
            result["stub_cpu_s"] = round(process_cpu_s(stub.process.pid), 2)
        result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
        path = save_result(args.out, "streaming_efficiency", result)
        print(f"result: {path}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chain_levels(config: PipelineConfig) -> tuple[tuple[int, int], ...]:
    """The runner's chain for one instruction: (max_tokens, requests at once) a level."""
    levels = [(config.responses.sampling.max_tokens, 1)]
    for _ in range(config.critiques.rounds):
        levels += [
            (config.critiques.sampling.max_tokens, 1),
            (config.revisions.sampling.max_tokens, 1),
        ]
    # two verdicts (original, revision), each asked once more with A/B swapped; one token
    levels.append((1, 2 * (2 if config.judge.swap else 1)))
    return tuple(levels)


def _served(stats: dict[str, Any], slots: int) -> dict[str, Any]:
    return {
        "completions": stats["completions"],
        "sum_delay_s": stats["sum_delay_s"],
        "ideal_s": stats["sum_delay_s"] / slots,
        "max_in_service_seen": stats["max_in_service"],
        "mean_delay_s": stats["sum_delay_s"] / max(1, stats["completion_requests"]),
    }
