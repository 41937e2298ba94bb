"""Client overhead (issue 6, item 1): completions/s of the pipeline runner against a stub that answers at once.

    python -m bench client-overhead                          # 20,000 completions, both ways
    python -m bench client-overhead --completions 2000 --profile .cache/bench/runner.prof

The stub (`tests.support.stub_generator`) runs in its own process and answers every request
at once. The project's `PipelineRunner` (with its run-folder store: one `write()` per record,
fsync at most every second) takes instructions from a file through response -> critique ->
revision -> judge (2 verdicts x 2 swapped A/B queries) -> pair: 7 completions an
instruction. The same chain written the obvious way (`bench.obvious_chain`) runs against the
same stub in the same invocation. Completions are counted by the stub.

Both processes share the machine's cores with the stub: on a 2-core machine the figures are
a floor for what one client process does. `--stub-only` measures the stub's own ceiling with
a minimal keep-alive client, so a reader can see the stub is not what limits the client.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import logging
import math
import os
import platform
import pstats
import random
import shutil
import subprocess
import tempfile
import time
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.obvious_chain import Instruction, run_obvious
from cai.generator import GeneratorClient
from cai.generator.types import CompletionResult
from cai.pipeline.config import EndpointConfig, PipelineConfig
from cai.pipeline.endpoints import CallStats, Endpoint, EndpointPool, RetryingCaller
from cai.pipeline.records import INSTRUCTION_TYPES
from cai.pipeline.runner import PipelineRunner
from cai.pipeline.transport import KeepAliveTransport

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "bench"
# response + critique + revision + 2 verdicts x 2 swapped judge queries
COMPLETIONS_PER_INSTRUCTION = 7
GOAL_PER_S = 1000.0
FIXES = {"runner_sharded", "runner_aiohttp"}


# ---- shared by the client benchmarks ---------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU model, cores, load, versions, commit, date."""
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("httpx", "httpcore", "openai", "pydantic", "cai-bootstrap"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit + ("+uncommitted" if dirty else ""),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def save_result(out_dir: Path, name: str, result: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def make_instructions(count: int, seed: int = 0) -> list[Instruction]:
    """Distinct made-up instructions (no two near-duplicates), cycling through the four types."""
    rng = random.Random(seed)
    letters = "abcdefghiklmnoprstuvwy"
    words = sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(4000)}
    )
    rows: list[Instruction] = []
    for i in range(count):
        kind = INSTRUCTION_TYPES[i % len(INSTRUCTION_TYPES)]
        topic = " ".join(rng.choice(words) for _ in range(8))
        rows.append((f"{kind}-{i // len(INSTRUCTION_TYPES):05d}", kind, f"Explain {topic}."))
    return rows


def write_instruction_file(path: Path, rows: list[Instruction]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for iid, kind, text in rows:
            handle.write(json.dumps({"id": iid, "type": kind, "text": text}) + "\n")


class TimedClient:
    """A `GeneratorClient` that remembers when the first request left and the last answer came.

    Two clock reads a request: nothing next to an HTTP round trip.
    """

    def __init__(self, client: GeneratorClient) -> None:
        self.client = client
        self.first: float | None = None
        self.last: float | None = None

    async def complete(self, prompts: list[str], *, model: str, **params: Any) -> CompletionResult:
        if self.first is None:
            self.first = time.perf_counter()
        try:
            return await self.client.complete(prompts, model=model, **params)
        finally:
            self.last = time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)  # models() for the runner's served-model check


def runner_config(
    base_url: str, instruction_file: Path, *, concurrency: int, seed: int = 0
) -> PipelineConfig:
    """The pipeline's default config (sampling, judge, store) with instructions from a file."""
    return PipelineConfig.model_validate(
        {
            "name": "bench",
            "seed": seed,
            "endpoints": [{"url": base_url, "concurrency": concurrency, "api_key_env": None}],
            "instructions": {"source": "file", "file": str(instruction_file)},
        }
    )


async def run_runner(
    config: PipelineConfig,
    run_dir: Path,
    *,
    shards: int = 1,
    transport: str = "keepalive",
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """The project's runner, built as `run_pipeline` builds it, with the endpoint timed.

    `shards` > 1 splits the endpoint's limit over that many `GeneratorClient`s of the same
    URL (an `EndpointPool` of several endpoints), and `transport="aiohttp"` gives each
    client an aiohttp transport under the same httpx API: the two fixes measured for
    httpcore's connection pool, whose cost per request grows with connections x requests.
    """
    endpoint_cfg: EndpointConfig = config.endpoints[0]
    stats = CallStats()
    limits = [
        endpoint_cfg.concurrency // shards + (i < endpoint_cfg.concurrency % shards)
        for i in range(shards)
    ]
    async with AsyncExitStack() as stack:
        timed = []
        for limit in limits:
            connections = limit + (8 if shards == 1 else 2)
            client = GeneratorClient(
                endpoint_cfg.url,
                timeout=endpoint_cfg.timeout_s,
                max_retries=0,
                max_connections=connections,
                transport=_transport(transport, connections),
            )
            await stack.enter_async_context(client)
            timed.append(TimedClient(client))
        pool = EndpointPool(
            [
                Endpoint(endpoint_cfg.url, t, limit, endpoint_cfg.gpus)
                for t, limit in zip(timed, limits, strict=True)
            ]
        )
        runner = PipelineRunner(
            config,
            run_dir,
            generator=RetryingCaller(pool, config.retry, stats, seed=config.seed),
            stats=stats,
        )
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        try:
            summary = await runner.run()
        finally:
            if profile is not None:
                profile.disable()
        ended = time.perf_counter()
    firsts = [t.first for t in timed if t.first is not None]
    lasts = [t.last for t in timed if t.last is not None]
    first = min(firsts, default=started)
    last = max(lasts, default=ended)
    return {
        "wall_s": ended - started,
        "before_first_request_s": first - started,
        "generation_s": last - first,
        "after_last_answer_s": ended - last,
        "pairs": summary.counts.get("pairs", {}),
        "retries": stats.retries,
        "failed_requests": stats.failed,
    }


def _transport(kind: str, connections: int) -> Any:
    if kind == "keepalive":
        # What `run_pipeline` gives every endpoint (cai.pipeline.runner.open_pool).
        return KeepAliveTransport(max_connections=connections)
    if kind == "httpx":
        return None  # GeneratorClient's default: httpx over httpcore
    if kind == "aiohttp":
        import httpx
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return AiohttpTransport(limits=limits)
    raise ValueError(f"unknown transport {kind!r}: keepalive, httpx or aiohttp")


def profile_summary(profile: cProfile.Profile, top: int = 25) -> str:
    buffer = io.StringIO()
    pstats.Stats(profile, stream=buffer).sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


# ---- the stub's own ceiling -------------------------------------------------------------------


async def stub_ceiling(port: int, *, connections: int, seconds: float, body: bytes) -> float:
    """Requests/s the stub answers to a minimal keep-alive client (pre-built request bytes)."""
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: stub\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - started)


def measure_stub(port: int, config: PipelineConfig, seconds: float) -> dict[str, float]:
    prompt = "### Instruction:\nExplain the river.\n\n### Response:\n" * 8
    results = {}
    for label, max_tokens in (
        ("response_384", config.responses.sampling.max_tokens),
        ("judge_1", 1),
    ):
        payload: dict[str, Any] = {
            "model": config.model,
            "prompt": [prompt],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": 1,
            "stop": ["###"],
        }
        if max_tokens == 1:
            payload["logprobs"] = config.judge.top_logprobs
        rate = asyncio.run(
            stub_ceiling(port, connections=64, seconds=seconds, body=json.dumps(payload).encode())
        )
        results[label] = round(rate, 1)
    return results


# ---- the benchmark ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench client-overhead", description=__doc__)
    parser.add_argument(
        "--completions", type=int, default=20_000, help="target completions per way"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, both ways")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    parser.add_argument("--skip-obvious", action="store_true", help="only the project's runner")
    parser.add_argument("--stub-only", action="store_true", help="only the stub's ceiling")
    parser.add_argument("--stub-seconds", type=float, default=5.0)
    parser.add_argument(
        "--fixes",
        type=lambda text: [f for f in text.split(",") if f],
        default=["runner_sharded", "runner_aiohttp"],
        help="proposed fixes to measure too, comma-separated: runner_sharded (the endpoint "
        "split over --shards httpx clients), runner_aiohttp (an aiohttp transport); '' for none",
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the runner; write the .prof here"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run folders (printed) instead of deleting"
    )
    return parser.parse_args(argv)


def quiet_http_logs() -> None:
    """`cai` logs at WARNING; per-request INFO lines of the HTTP stacks are no client's cost."""
    for name in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    from tests.support.stub_generator import StubServer

    args = parse_args(argv)
    unknown = set(args.fixes) - FIXES
    if unknown:
        print(f"unknown --fixes {sorted(unknown)}: choose from {sorted(FIXES)}")
        return 2
    quiet_http_logs()
    count = math.ceil(args.completions / COMPLETIONS_PER_INSTRUCTION)
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    result: dict[str, Any] = {
        "benchmark": "client-overhead",
        "command": "python -m bench client-overhead " + " ".join(argv),
        "machine": machine(),
        "instructions": count,
        "concurrency": args.concurrency,
        "goal_completions_per_s": GOAL_PER_S,
    }
    try:
        rows = make_instructions(count)
        write_instruction_file(work / "instructions.jsonl", rows)
        with StubServer() as stub:
            assert stub.process is not None
            config = runner_config(
                stub.base_url, work / "instructions.jsonl", concurrency=args.concurrency
            )
            result["stub_ceiling_per_s"] = measure_stub(stub.port, config, args.stub_seconds)
            print(f"stub alone (64 keep-alive connections): {result['stub_ceiling_per_s']} req/s")
            if args.stub_only:
                return _finish(args, result)

            profile = cProfile.Profile() if args.profile else None
            ours = _measure_runner(stub, config, work / "run", profile=profile)
            result["runner"] = ours
            _print("runner (PipelineRunner as run_pipeline builds it, run-folder store)", ours)
            if profile is not None and args.profile is not None:
                args.profile.parent.mkdir(parents=True, exist_ok=True)
                profile.dump_stats(str(args.profile))
                result["runner_profile_top"] = profile_summary(profile)
                print(f"profile: {args.profile}")
            fixes = {
                "runner_sharded": (
                    f"runner, endpoint split over {args.shards} HTTP clients",
                    {"shards": args.shards},
                ),
                "runner_aiohttp": (
                    "runner, GeneratorClient on an aiohttp transport",
                    {"transport": "aiohttp"},
                ),
            }
            for key in args.fixes:
                label, options = fixes[key]
                figures = _measure_runner(stub, config, work / key, **options)
                result[key] = figures
                _print(label, figures)

            if not args.skip_obvious:
                stub.reset_stats()
                cpu0, stub_cpu0 = time.process_time(), process_cpu_s(stub.process.pid)
                (work / "obvious").mkdir()
                stats = asyncio.run(
                    run_obvious(
                        config, rows, stub.base_url, work / "obvious", concurrency=args.concurrency
                    )
                )
                obvious = {
                    "wall_s": stats.wall_s,
                    "step_wall_s": stats.step_wall_s,
                    "client_cpu_s": time.process_time() - cpu0,
                    "stub_cpu_s": process_cpu_s(stub.process.pid) - stub_cpu0,
                    "completions": stub.stats()["completions"],
                    "pairs": stats.pairs,
                }
                obvious["completions_per_s"] = obvious["completions"] / stats.wall_s
                obvious["client_cpu_ms_per_completion"] = (
                    1000 * obvious["client_cpu_s"] / obvious["completions"]
                )
                result["obvious"] = _rounded(obvious)
                _print("obvious way (openai SDK, gather per step)", obvious)
                result["runner_vs_obvious"] = round(
                    ours["completions_per_s"] / obvious["completions_per_s"], 3
                )
                for key in args.fixes:
                    result[f"{key}_vs_obvious"] = round(
                        result[key]["completions_per_s"] / obvious["completions_per_s"], 3
                    )
        result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
        return _finish(args, result)
    finally:
        if args.keep:
            print(f"run folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _measure_runner(
    stub: Any,
    config: PipelineConfig,
    run_dir: Path,
    *,
    shards: int = 1,
    transport: str = "keepalive",
    profile: Any = None,
) -> dict[str, Any]:
    stub.reset_stats()
    cpu0, stub_cpu0 = time.process_time(), process_cpu_s(stub.process.pid)
    figures = asyncio.run(
        run_runner(config, run_dir, shards=shards, transport=transport, profile=profile)
    )
    figures["shards"] = shards
    figures["transport"] = transport
    figures["client_cpu_s"] = time.process_time() - cpu0
    figures["stub_cpu_s"] = process_cpu_s(stub.process.pid) - stub_cpu0
    figures["completions"] = stub.stats()["completions"]
    figures["completions_per_s"] = figures["completions"] / figures["wall_s"]
    figures["client_cpu_ms_per_completion"] = (
        1000 * figures["client_cpu_s"] / figures["completions"]
    )
    figures["generation_completions_per_s"] = figures["completions"] / figures["generation_s"]
    return _rounded(figures)


def _finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    path = save_result(args.out, "client_overhead", result)
    print(f"result: {path}")
    return 0


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(v, 3) if isinstance(v, float) else (_rounded(v) if isinstance(v, dict) else v)
        for k, v in values.items()
    }


def _print(label: str, figures: dict[str, Any]) -> None:
    line = f"{label}: {figures['completions']} completions in {figures['wall_s']:.2f}s = "
    line += f"{figures['completions_per_s']:.0f}/s (client CPU {figures['client_cpu_s']:.1f}s = "
    line += f"{figures['client_cpu_ms_per_completion']:.2f} ms a completion, "
    line += f"stub CPU {figures['stub_cpu_s']:.1f}s)"
    if "generation_s" in figures:
        line += (
            f"; before first request {figures['before_first_request_s']:.2f}s, "
            f"generating {figures['generation_s']:.2f}s, "
            f"after last answer {figures['after_last_answer_s']:.2f}s"
        )
    print(line)
