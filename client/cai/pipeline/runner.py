"""The streaming runner: each accepted instruction runs its chain of steps (cai.pipeline.steps).

    summary = await run_pipeline(config, Path("runs/demo"))            # async
    summary = run_pipeline_sync(config, Path("runs/demo"), progress=bar) # from sync code

How it runs (DESIGN.md "How the pipeline runs"):
- Each accepted instruction starts its own chain task the moment it is accepted; the chain
  requests its response, then the critique of that response, and so on (the steps and their
  order: `cai.pipeline.steps.PIPELINE`). There is no barrier between steps: only the split
  into train/test waits for every pair.
- All requests share one concurrency limit per endpoint (`EndpointPool`); deeper steps go
  first when slots are scarce (priority `(-depth in the chain, chain number)`), so started
  chains finish before new ones begin.
- Every request's seed is `derive_seed(run seed, record id, step)`: the records do not
  depend on timing, endpoint or interruptions.
- A request that keeps failing writes its record with `status: failed` and the reason; the
  chain of that instruction stops there and the run goes on. On the next start those
  records are retried (`store.retry_failed`), instruction attempts included. A run whose
  failed records pass `retry.max_failed_share` ends `failed`, not `complete`.
- Before anything is written, every endpoint is asked for its models: a generator that
  does not answer stops the run at once (`GeneratorUnreachable`, cai.pipeline.served).
- Resume: records already in a step file are reused, never requested again; the instruction
  producer continues at the next attempt of each type (cai.pipeline.steps.instructions).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from cai.generator import GeneratorClient
from cai.generator.types import CompletionResult
from cai.pipeline.config import EndpointConfig, PipelineConfig, RetryConfig
from cai.pipeline.dedupe import DiversityTally, DuplicateIndex, NearDuplicateGroups
from cai.pipeline.endpoints import (
    CallStats,
    Endpoint,
    EndpointPool,
    Priority,
    RetryingCaller,
)
from cai.pipeline.heldout import HeldoutGuard
from cai.pipeline.inputs import PipelineInputs
from cai.pipeline.judgements import labels
from cai.pipeline.manifest import Manifest
from cai.pipeline.schema import InstructionRecord, Sampling
from cai.pipeline.served import GeneratorUnreachable, ModelNotServed, served_models
from cai.pipeline.session import (
    NoProgress,
    ProgressSink,
    RunConfigMismatch,
    SessionBook,
)
from cai.pipeline.split import write_split
from cai.pipeline.steps import PIPELINE, Pipeline, Rounds, Step
from cai.pipeline.steps.base import Chain, Generation, StepContext
from cai.pipeline.steps.instructions import InstructionProducer, judge_instruction
from cai.pipeline.store import RunStore
from cai.pipeline.summary import RunSummary, summarise
from cai.pipeline.transport import KeepAliveTransport

__all__ = [
    "GeneratorUnreachable",
    "ModelNotServed",
    "PipelineRunner",
    "ProgressSink",
    "RunConfigMismatch",
    "open_pool",
    "run_pipeline",
    "run_pipeline_sync",
]

logger = logging.getLogger(__name__)


class PipelineRunner:
    """One session of one run. Use `run_pipeline` unless you bring your own callers.

    `steps`: the chain each instruction runs (default `cai.pipeline.steps.PIPELINE`).
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_dir: Path,
        *,
        generator: RetryingCaller,
        judge: RetryingCaller | None = None,
        stats: CallStats | None = None,
        progress: ProgressSink | None = None,
        gpus: float = 1.0,
        accept_config_change: bool = False,
        steps: Pipeline = PIPELINE,
    ) -> None:
        self.config = config
        self.accept_config_change = accept_config_change
        self.run_dir = run_dir
        self.generator = generator
        self.judge_caller = judge or generator
        self.stats = stats or generator.stats
        self.progress: ProgressSink = progress or NoProgress()
        self.gpus = gpus
        self.steps = steps
        # Every file the config names, read before the run folder is touched: a bad one
        # refuses the run with nothing written.
        self.inputs = PipelineInputs.load(config)
        self.store = RunStore(run_dir, config.store, steps.record_types)
        self.book = SessionBook(run_dir, config, gpus=gpus, stats=self.stats)
        self.context = StepContext(
            config=config,
            templates=self.inputs.templates,
            pool=self.inputs.pool,
            constitution=self.inputs.constitution,
            generate=self._generate,
            complete_judge=self._complete_judge,
            count=self.book.count,
            judge_labels=labels(self.inputs.templates["judge"]),
        )
        self.heldout = HeldoutGuard(self.inputs.heldout)
        self._plan = self._chain_plan()
        self._chains: set[asyncio.Task[None]] = set()
        self._chain_seq = 0
        # Built as records are written, so the end of the run (split, summary) does not
        # re-measure every text while the generator sits idle.
        self._groups = NearDuplicateGroups(config.split.group_threshold)
        self._tallies = {"instructions": DiversityTally(), "responses": DiversityTally()}

    # ---- the run ------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        # Before anything is written: a generator that is not there fails the run at once,
        # instead of every request failing after its retries and the folder filling with them.
        callers = {"generator": self.generator}
        if self.judge_caller is not self.generator:
            callers["judge"] = self.judge_caller
        served = await served_models(self.config, callers)
        # A damaged manifest stops the run here too (RunFolderCorrupt), before a file is touched.
        previous = Manifest.load_or_new(self.run_dir, self.config.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.book.check_config(accept_change=self.accept_config_change)
        self.store.open()
        dropped = self._drop_failed() if self.config.store.retry_failed else {}
        manifest = self.book.start(previous, self.inputs, dropped, self.store.repaired_bytes)
        manifest.served_models = served
        session = manifest.sessions[-1]
        started = time.monotonic()
        saver = asyncio.create_task(self.book.save_periodically(manifest, session, started))
        producer = InstructionProducer(
            self.context,
            self.store.files["instructions"].records,
            self.heldout,
            write=self._write,
            start_chain=self._start_chain,
            progress=self.progress,
        )
        try:
            if self.config.instructions.source == "file":
                await producer.read_file(self.inputs.instructions)
            else:
                await producer.produce()
            while self._chains:
                await asyncio.gather(*list(self._chains))
            split_counts = write_split(self.store, self.config, self._groups)
            session.completed = True
            manifest.status_reason = self._too_many_failed()
            manifest.status = "failed" if manifest.status_reason else "complete"
        finally:
            saver.cancel()
            for task in self._chains:
                task.cancel()
            self.store.close()
            self.book.end(manifest, session, started)
        summary = summarise(
            self.run_dir,
            self.config,
            self.store,
            manifest,
            split_counts,
            self._tallies,
            steps=self.steps.names,
        )
        manifest.counts = summary.counts
        manifest.skip_reasons = summary.skip_reasons
        manifest.failures = summary.failures
        manifest.diversity = summary.diversity
        manifest.save(self.run_dir)
        return summary

    def _too_many_failed(self) -> str | None:
        """Why the run is not complete, when its failed records pass `retry.max_failed_share`."""
        records = [
            r
            for step in self.steps.names
            if step != "pairs"
            for r in self.store.files[step].records.values()
        ]
        failed = sum(1 for r in records if r.status == "failed")
        limit = self.config.retry.max_failed_share
        if not records or failed <= limit * len(records):
            return None
        return (
            f"{failed} of {len(records)} records failed after their retries ({failed / len(records):.0%}, "
            f"above retry.max_failed_share {limit:.0%}); run the same command again to retry them"
        )

    def _drop_failed(self) -> dict[str, int]:
        """Remove failed records so that this session asks for them again (instruction
        attempts included: the producer fills the holes first)."""
        dropped = {}
        for step in self.steps.names:
            count = self.store.files[step].drop(lambda r: r.status == "failed")
            if count:
                dropped[step] = count
                logger.info("retrying %d failed %s records", count, step)
        return dropped

    def _judge_instruction(
        self,
        record: InstructionRecord,
        problem: str | None,
        index: DuplicateIndex,
        seeds: DuplicateIndex,
    ) -> None:
        judge_instruction(record, problem, index, seeds, self.heldout)

    # ---- requests and records -----------------------------------------------------------

    async def _complete_judge(self, prompts: list[str], **params: Any) -> CompletionResult:
        return await self.judge_caller.complete(prompts, **params)

    async def _generate(
        self, step: str, prompt: str, sampling: Sampling, priority: Priority
    ) -> Generation:
        result = await self.generator.complete(
            [prompt],
            priority=priority,
            model=self.config.model,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=sampling.stop or None,  # whole strings: vLLM matches them on the text
            seed=sampling.seed,
        )
        return Generation(result.choices[0][0], self.book.count(step, result))

    def _write(self, step: str, record: Any) -> None:
        self.store.files[step].append(record)
        self.book.counters.written[step] += 1
        self.progress.advance(step, record.status)
        if record.status != "ok":
            return
        if step in self._tallies:
            self._tallies[step].add(record.id, record.text)
        elif step == "pairs":
            instruction = self.store.files["instructions"].get(record.instruction_id)
            if instruction is not None:
                self._groups.add(instruction.id, instruction.text)

    # ---- chains -------------------------------------------------------------------------

    def _start_chain(self, instruction: InstructionRecord) -> int:
        """Start `instruction`'s chain; return its number (1 for the first of the session)."""
        self._chain_seq += 1
        task = asyncio.create_task(self._chain(instruction, self._chain_seq))
        self._chains.add(task)
        task.add_done_callback(self._chain_done)
        for step in self.steps.names[1:]:
            self.progress.planned(step, 1)
        return self._chain_seq

    def _chain_done(self, task: asyncio.Task[None]) -> None:
        self._chains.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("chain failed: %r", task.exception())

    def _chain_plan(self) -> list[tuple[Step, int]]:
        """The chain's steps in order, each with its round (0 outside `Rounds`)."""
        plan: list[tuple[Step, int]] = []
        for part in self.steps.chain:
            if isinstance(part, Rounds):
                for round_ in range(1, part.count(self.config) + 1):
                    plan.extend((step, round_) for step in part.steps)
            else:
                plan.append((part, 0))
        return plan

    async def _chain(self, instruction: InstructionRecord, seq: int) -> None:
        """Each step's record in turn, read back when the step file holds it, else made and
        written; the chain stops at the first record that is not `ok`."""
        chain = Chain(instruction, seq)
        for depth, (step, round_) in enumerate(self._plan, start=1):
            chain.round = round_
            record = self.store.files[step.name].get(step.record_id(chain))
            if record is None:
                record = await step.make(self.context, chain, (-depth, seq))
                self._write(step.name, record)
            if record.status != "ok":
                return
            step.advance(chain, record)


# ---- entry points ---------------------------------------------------------------------------


@asynccontextmanager
async def open_pool(
    endpoints: list[EndpointConfig], retry: RetryConfig | None = None
) -> AsyncIterator[EndpointPool]:
    """GeneratorClients (their own retries off: the pool's caller retries and counts) in a pool.

    `retry` sets the pool's circuit breaker (`trip_after`, `cooldown_s`).
    """
    async with AsyncExitStack() as stack:
        pool_endpoints = []
        for cfg in endpoints:
            client = GeneratorClient(
                cfg.url,
                api_key=os.environ.get(cfg.api_key_env) if cfg.api_key_env else None,
                timeout=cfg.timeout_s,
                max_retries=0,
                max_connections=cfg.concurrency + 8,
                transport=KeepAliveTransport(max_connections=cfg.concurrency + 8),
            )
            await stack.enter_async_context(client)
            pool_endpoints.append(Endpoint(cfg.url, client, cfg.concurrency, cfg.gpus))
        yield EndpointPool.from_config(pool_endpoints, retry or RetryConfig())


async def run_pipeline(
    config: PipelineConfig,
    run_dir: Path,
    *,
    progress: ProgressSink | None = None,
    accept_config_change: bool = False,
    steps: Pipeline = PIPELINE,
) -> RunSummary:
    """Run (or resume) the pipeline of `config` into `run_dir`; return its summary.

    `config.model` names what generates (the base, or a stage's adapter as vLLM serves it);
    `steps`, the chain each instruction runs (default `cai.pipeline.steps.PIPELINE`).
    """
    stats = CallStats()
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(config.endpoints, config.retry))
        generator = RetryingCaller(pool, config.retry, stats, seed=config.seed)
        judge = None
        gpus = sum(e.gpus for e in config.endpoints)
        if config.judge.endpoints:
            judge_pool = await stack.enter_async_context(
                open_pool(config.judge.endpoints, config.retry)
            )
            judge = RetryingCaller(judge_pool, config.retry, stats, seed=config.seed + 1)
            gpus += sum(e.gpus for e in config.judge.endpoints)
        runner = PipelineRunner(
            config,
            run_dir,
            generator=generator,
            judge=judge,
            stats=stats,
            progress=progress,
            gpus=gpus,
            accept_config_change=accept_config_change,
            steps=steps,
        )
        return await runner.run()


def run_pipeline_sync(
    config: PipelineConfig,
    run_dir: Path,
    *,
    progress: ProgressSink | None = None,
    accept_config_change: bool = False,
) -> RunSummary:
    return asyncio.run(
        run_pipeline(config, run_dir, progress=progress, accept_config_change=accept_config_change)
    )
