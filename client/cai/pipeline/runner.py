"""The streaming runner: instructions -> responses -> critiques -> revisions -> judgements -> pairs.

    summary = await run_pipeline(config, Path("runs/demo"))            # async
    summary = run_pipeline_sync(config, Path("runs/demo"), progress=bar) # from sync code

How it runs (DESIGN.md "How the pipeline runs"):
- Each accepted instruction starts its own chain task the moment it is accepted; the chain
  requests its response, then the critique of that response, and so on. There is no
  barrier between steps: only the split into train/test waits for every pair.
- All requests share one concurrency limit per endpoint (`EndpointPool`); deeper steps go
  first when slots are scarce, so started chains finish before new ones begin.
- Every request's seed is `derive_seed(run seed, record id, step)`: the records do not
  depend on timing, endpoint or interruptions.
- A request that keeps failing writes its record with `status: failed` and the reason; the
  chain of that instruction stops there and the run goes on. On the next start those
  records are retried (`store.retry_failed`), instruction attempts included. A run whose
  failed records pass `retry.max_failed_share` ends `failed`, not `complete`.
- Before anything is written, every endpoint is asked for its models: a generator that
  does not answer stops the run at once (`GeneratorUnreachable`).
- Resume: records already in a step file are reused, never requested again; the instruction
  producer continues at the next attempt of each type.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from cai.generator import GeneratorClient, GeneratorError
from cai.generator.types import Choice, CompletionResult
from cai.pipeline import critiques, instructions, judgements, pairs, responses, revisions, rules
from cai.pipeline.accounting import HEARTBEAT_S, AccountingLog, recover
from cai.pipeline.config import (
    EndpointConfig,
    PipelineConfig,
    RetryConfig,
    SamplingConfig,
    load_config,
)
from cai.pipeline.dedupe import DiversityTally, DuplicateIndex, NearDuplicateGroups
from cai.pipeline.endpoints import (
    CallStats,
    Endpoint,
    EndpointPool,
    Priority,
    RequestFailed,
    RetryingCaller,
)
from cai.pipeline.heldout import HeldoutGuard
from cai.pipeline.inputs import PipelineInputs
from cai.pipeline.manifest import Manifest, Session, StepTokens, environment, package_versions
from cai.pipeline.prompts import Template
from cai.pipeline.records import (
    INSTRUCTION_TYPES,
    STEPS,
    CritiqueRecord,
    GeneratedRecord,
    InstructionRecord,
    InstructionType,
    JudgementRecord,
    JudgeQuery,
    PairRecord,
    ResponseRecord,
    RevisionRecord,
    Sampling,
    TokenUsage,
    Verdict,
    critique_id,
    derive_seed,
    instruction_id,
    judgement_id,
    pair_id,
    response_id,
    revision_id,
)
from cai.pipeline.split import split_groups
from cai.pipeline.store import RunStore
from cai.pipeline.summary import RunSummary, summarise
from cai.pipeline.transport import KeepAliveTransport
from cai.runfolder import CONFIG_FILE, write_atomic, write_jsonl_atomic
from protocol.datasets import PreferencePair

logger = logging.getLogger(__name__)

MANIFEST_EVERY_S = 5.0
# Reading a file, the runner lets the chains it started send their first requests after the
# first instruction and then every this many: the generator is busy at once instead of after
# the whole file is de-duplicated (0.6 s for 2,858 instructions), and the event loop is not
# woken for every line (yielding after each cost the client 15% of its completions/s;
# docs/benchmarks.md, items 1 and 2).
CHAINS_BETWEEN_YIELDS = 64


class RunConfigMismatch(ValueError):
    """The run folder was started with a config that decides different records."""


class ModelNotServed(ValueError):
    """An endpoint answers but does not serve the configured model or adapter."""


class GeneratorUnreachable(RuntimeError):
    """No endpoint of the generator (or of the judge) answers `GET /v1/models`."""


class ProgressSink(Protocol):
    """What the CLI's progress bars implement; the runner calls it after each record."""

    def planned(self, step: str, total: int) -> None: ...

    def advance(self, step: str, status: str) -> None: ...


class _NoProgress:
    def planned(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, status: str) -> None:
        pass


@dataclass
class _Generation:
    choice: Choice
    usage: TokenUsage


@dataclass
class _SessionCounters:
    written: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, StepTokens] = field(default_factory=dict)


class PipelineRunner:
    """One session of one run. Use `run_pipeline` unless you bring your own callers."""

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
    ) -> None:
        self.config = config
        self.accept_config_change = accept_config_change
        self.run_dir = run_dir
        self.generator = generator
        self.judge_caller = judge or generator
        self.stats = stats or generator.stats
        self.progress: ProgressSink = progress or _NoProgress()
        self.gpus = gpus
        # Every file the config names, read before the run folder is touched: a bad one
        # refuses the run with nothing written.
        inputs = PipelineInputs.load(config)
        self.templates: dict[str, Template] = inputs.templates
        self.constitution = inputs.constitution
        self.pool = inputs.pool
        self._file_rows = inputs.instructions
        self.store = RunStore(run_dir, config.store)
        self.counters = _SessionCounters()
        self.accounting: AccountingLog | None = None  # opened with the session
        self._chains: set[asyncio.Task[None]] = set()
        self._chain_seq = 0
        self._labels = judgements.labels(self.templates["judge"])
        # Built as records are written, so the end of the run (split, summary) does not
        # re-measure every text while the generator sits idle.
        self._groups = NearDuplicateGroups(config.split.group_threshold)
        self._tallies = {"instructions": DiversityTally(), "responses": DiversityTally()}
        self.heldout = HeldoutGuard(inputs.heldout)

    # ---- the run ------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        # Before anything is written: a generator that is not there fails the run at once,
        # instead of every request failing after its retries and the folder filling with them.
        served = await self._served_models()
        # A damaged manifest stops the run here too (RunFolderCorrupt), before a file is touched.
        previous = Manifest.load_or_new(self.run_dir, self.config.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.store.open()
        dropped = self._drop_failed() if self.config.store.retry_failed else {}
        manifest = self._start_manifest(previous, dropped)
        manifest.served_models = served
        session = manifest.sessions[-1]
        started = time.monotonic()
        saver = asyncio.create_task(self._save_periodically(manifest, session, started))
        try:
            if self.config.instructions.source == "file":
                await self._read_file()
            else:
                await self._produce()
            while self._chains:
                await asyncio.gather(*list(self._chains))
            split_counts = self._split()
            session.completed = True
            manifest.status_reason = self._too_many_failed()
            manifest.status = "failed" if manifest.status_reason else "complete"
        finally:
            saver.cancel()
            for task in self._chains:
                task.cancel()
            self.store.close()
            self._end_session(manifest, session, started)
        summary = summarise(
            self.run_dir, self.config, self.store, manifest, split_counts, self._tallies
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
            r for step in STEPS if step != "pairs" for r in self.store.files[step].records.values()
        ]
        failed = sum(1 for r in records if r.status == "failed")
        limit = self.config.retry.max_failed_share
        if not records or failed <= limit * len(records):
            return None
        return (
            f"{failed} of {len(records)} records failed after their retries ({failed / len(records):.0%}, "
            f"above retry.max_failed_share {limit:.0%}); run the same command again to retry them"
        )

    def _kinds(self) -> list[InstructionType]:
        return [k for k in INSTRUCTION_TYPES if self.config.instructions.counts.get(k, 0) > 0]

    def _check_config(self) -> None:
        path = self.run_dir / CONFIG_FILE
        if path.exists():
            saved = load_config(path)
            if saved.fingerprint() != self.config.fingerprint() and not self.accept_config_change:
                raise RunConfigMismatch(
                    f"{self.run_dir} was started with a different config ({path}); records would "
                    "not match. Resume with that config, or start a new run (--name)."
                )
        write_atomic(path, yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))

    def _drop_failed(self) -> dict[str, int]:
        """Remove failed records so that this session asks for them again (instruction
        attempts included: `_produce` fills the holes first)."""
        dropped = {}
        for step in STEPS:
            count = self.store.files[step].drop(lambda r: r.status == "failed")
            if count:
                dropped[step] = count
                logger.info("retrying %d failed %s records", count, step)
        return dropped

    # ---- manifest -----------------------------------------------------------------------

    def _start_manifest(self, manifest: Manifest, dropped: dict[str, int]) -> Manifest:
        config = self.config
        recover(manifest, self.run_dir)  # killed sessions: their time and tokens, as logged
        manifest.status = "running"
        manifest.config = config.model_dump(mode="json")
        manifest.config_fingerprint = config.fingerprint()
        manifest.seed = config.seed
        manifest.model = config.model
        manifest.base_model = config.base_model
        manifest.judge_model = config.judge_model()
        manifest.templates = {
            name: {"tag": t.tag, "sha256": t.sha256} for name, t in self.templates.items()
        }
        manifest.constitution = {
            "tag": self.constitution.tag,
            "path": config.constitution or "packaged",
            "principles": [p.id for p in self.constitution.principles],
        }
        manifest.seed_pool = {
            "version": str(self.pool.version),
            "path": config.seed_pool or "packaged",
        }
        manifest.packages = package_versions()
        env = environment()
        manifest.python, manifest.platform = env["python"], env["platform"]
        manifest.usd_per_gpu_hour = config.usd_per_gpu_hour
        manifest.sessions.append(
            Session(
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                repaired_torn_bytes=self.store.repaired_bytes,
                dropped_failed=dropped,
            )
        )
        manifest.save(self.run_dir)
        self.accounting = AccountingLog.start(
            self.run_dir, session=len(manifest.sessions) - 1, gpus=self.gpus
        )
        return manifest

    def _fill_session(self, session: Session, started: float) -> None:
        session.wall_s = round(time.monotonic() - started, 3)
        session.gpu_s = round(session.wall_s * self.gpus, 3)
        session.records_written = dict(self.counters.written)
        session.tokens = {k: v.model_copy() for k, v in self.counters.tokens.items()}
        session.retries = self.stats.retries
        session.retry_reasons = dict(self.stats.retry_reasons)
        session.failed_requests = self.stats.failed

    def _end_session(self, manifest: Manifest, session: Session, started: float) -> None:
        self._fill_session(session, started)
        session.ended_at = datetime.now(UTC).isoformat(timespec="seconds")
        if not session.completed:
            manifest.status = "interrupted"
        manifest.total_up()
        manifest.save(self.run_dir)
        if self.accounting is not None:
            self.accounting.close()

    async def _save_periodically(
        self, manifest: Manifest, session: Session, started: float
    ) -> None:
        """A heartbeat in the accounting log every second (what a kill must not lose is on
        disk), the whole manifest every MANIFEST_EVERY_S (it is larger, and fsynced)."""
        saved = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self._fill_session(session, started)
            if self.accounting is not None:
                self.accounting.heartbeat(session)
            if time.monotonic() - saved >= MANIFEST_EVERY_S:
                manifest.total_up()
                manifest.save(self.run_dir)
                saved = time.monotonic()

    async def _served_models(self) -> list[dict[str, Any]]:
        """What each endpoint actually serves (for the manifest), asked once per endpoint.

        Refused: a generator (or judge) none of whose endpoints answers, and a model no
        endpoint serves. An endpoint that does not answer while another does is only
        logged: a replica may be restarting, and the pool skips it until it is back.
        """
        seen: list[dict[str, Any]] = []
        wanted = {self.config.model} | {self.config.judge_model()}
        served: set[str] = set()
        callers = {"generator": self.generator}
        if self.judge_caller is not self.generator:
            callers["judge"] = self.judge_caller
        for role, caller in callers.items():
            problems: list[str] = []
            listed = False  # a client that cannot list (a test double) is taken as answering
            for endpoint in caller.pool.endpoints:
                models = getattr(endpoint.client, "models", None)
                if models is None:
                    listed = True
                    continue
                try:
                    cards = await models()
                except GeneratorError as exc:
                    logger.warning("listing the models of %s failed: %s", endpoint.url, exc)
                    problems.append(str(exc).split("; ", 1)[0])  # what happened, not the hint
                    continue
                listed = True
                for card in cards:
                    served.add(card.id)
                    if card.id in wanted:
                        seen.append({"endpoint": endpoint.url, **card.model_dump(mode="json")})
            if problems and not listed:
                where = (
                    "the config's `judge.endpoints`"
                    if role == "judge"
                    else ("CAI_GENERATOR_URL or the config's `endpoints`")
                )
                raise GeneratorUnreachable(
                    f"the {role} cannot be used: {' | '.join(problems)}. Start it "
                    f"(`make serve`) or point the run at one that is up ({where}); "
                    "nothing was written"
                )
        if served and not wanted <= served:
            raise ModelNotServed(
                f"no endpoint serves {sorted(wanted - served)} (served: {sorted(served)}); "
                "load the adapter or fix `model` / `judge.model` in the config"
            )
        return seen

    # ---- requests -----------------------------------------------------------------------

    def _sampling(self, cfg: SamplingConfig, template: Template, seed: int) -> Sampling:
        stop = cfg.stop if cfg.stop is not None else list(template.stop)
        return Sampling(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            stop=stop,
            seed=seed,
        )

    def _count(self, step: str, result: CompletionResult) -> TokenUsage:
        tokens = self.counters.tokens.setdefault(step, StepTokens())
        tokens.requests += 1
        tokens.prompt_tokens += result.usage.prompt_tokens
        tokens.completion_tokens += result.usage.completion_tokens
        if self.accounting is not None:
            self.accounting.tokens(
                step,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
            )
        return TokenUsage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        )

    async def _generate(
        self, step: str, prompt: str, sampling: Sampling, priority: Priority
    ) -> _Generation:
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
        return _Generation(result.choices[0][0], self._count(step, result))

    def _write(self, step: str, record: Any) -> None:
        self.store.files[step].append(record)
        self.counters.written[step] += 1
        self.progress.advance(step, record.status)
        if record.status != "ok":
            return
        if step in self._tallies:
            self._tallies[step].add(record.id, record.text)
        elif step == "pairs":
            instruction = self.store.files["instructions"].get(record.instruction_id)
            if instruction is not None:
                self._groups.add(instruction.id, instruction.text)

    # ---- instructions -------------------------------------------------------------------

    async def _produce(self) -> None:
        """Generate instructions until every type has its count (or ran out of attempts).

        Decisions (accept, or reject as a duplicate of an earlier one) are taken in one fixed
        order, attempt by attempt and type by type: the next decision is always the active
        type with the smallest (next attempt, type order). Answers that come back early wait
        for their turn. So duplicates are found across types, the outcome does not depend on
        timing, and a resumed run continues the same sequence from what the file holds.

        Attempts missing below a type's last one (failed attempts dropped for a retry, see
        `_drop_failed`) are asked again first, each decided against every instruction
        already accepted: a request that failed is retried, not counted as final.
        """
        cfg = self.config.instructions
        kinds = self._kinds()
        file = self.store.files["instructions"]
        seeds = self._seed_index()
        index = DuplicateIndex(cfg.near_duplicate_threshold)
        target = {k: cfg.counts[k] for k in kinds}
        max_attempts = {k: math.ceil(target[k] * cfg.max_attempts_factor) for k in kinds}
        accepted: Counter[str] = Counter()
        decided: Counter[str] = Counter()
        present: dict[str, set[int]] = {k: set() for k in kinds}
        for record in sorted(file.records.values(), key=lambda r: (r.attempt, r.type)):
            decided[record.type] += 1
            present.setdefault(record.type, set()).add(record.attempt)
            if record.status == "ok":
                index.add(record.id, record.text)
                accepted[record.type] += 1
                self._start_chain(record)
        # Per type, the attempts still to ask, in order: the holes, then the next new ones.
        frontier = {k: max(present[k], default=-1) + 1 for k in kinds}
        holes = {k: sorted(set(range(frontier[k])) - present[k], reverse=True) for k in kinds}
        for kind in kinds:
            self.progress.planned("instructions", target[kind])

        def next_attempt(kind: InstructionType) -> int:
            if holes[kind]:
                return holes[kind].pop()
            frontier[kind] += 1
            return frontier[kind] - 1

        launched = Counter(decided)
        tasks: dict[tuple[str, int], asyncio.Task[_Generation | str]] = {}
        pending: dict[str, deque[int]] = {k: deque() for k in kinds}  # launched, undecided
        template = self.templates["instructions"]
        order = {k: i for i, k in enumerate(kinds)}

        def active(kind: InstructionType) -> bool:
            return accepted[kind] < target[kind] and decided[kind] < max_attempts[kind]

        try:
            while True:
                open_kinds = [k for k in kinds if active(k)]
                if not open_kinds:
                    break
                for kind in open_kinds:
                    while (
                        launched[kind] < max_attempts[kind]
                        and launched[kind] - decided[kind] < target[kind] - accepted[kind]
                    ):
                        number = next_attempt(kind)
                        tasks[(kind, number)] = asyncio.create_task(self._attempt(kind, number))
                        pending[kind].append(number)
                        launched[kind] += 1
                kind = min(open_kinds, key=lambda k: (pending[k][0], order[k]))
                attempt = pending[kind].popleft()
                outcome = await tasks.pop((kind, attempt))
                iid = instruction_id(kind, attempt)
                seed = derive_seed(self.config.seed, iid, "instructions")
                _, shown = instructions.build_prompt(
                    template, self.pool, kind, few_shot=cfg.few_shot, seed=seed
                )
                record = InstructionRecord(
                    id=iid,
                    instruction_id=iid,
                    type=kind,
                    attempt=attempt,
                    model=self.config.model,
                    template=template.tag,
                    sampling=self._sampling(cfg.sampling, template, seed),
                    few_shot=shown,
                )
                if isinstance(outcome, str):
                    record.status, record.reason = "failed", outcome
                else:
                    text, problem = instructions.parse(outcome.choice.text)
                    record.text = text
                    record.finish_reason = outcome.choice.finish_reason
                    record.usage = outcome.usage
                    self._judge_instruction(record, problem, index, seeds)
                self._write("instructions", record)
                decided[kind] += 1
                if record.status == "ok":
                    accepted[kind] += 1
                    self._start_chain(record)
        finally:
            for task in tasks.values():
                task.cancel()
        for kind in kinds:
            if accepted[kind] < target[kind]:
                logger.warning(
                    "%s: %d of %d instructions after %d attempts (duplicates are not refilled)",
                    kind,
                    accepted[kind],
                    target[kind],
                    decided[kind],
                )

    def _judge_instruction(
        self,
        record: InstructionRecord,
        problem: str | None,
        index: DuplicateIndex,
        seeds: DuplicateIndex,
    ) -> None:
        if problem is not None:
            record.status, record.reason = "rejected", problem
            return
        if self.heldout.match(record.text) is not None:
            record.status, record.reason = "rejected", "matches_heldout"
            return
        if seeds.find(record.text) is not None:
            record.status, record.reason = "rejected", "copies_seed"
            return
        duplicate = index.find(record.text)
        if duplicate is not None:
            record.status = "rejected"
            record.reason = "duplicate" if duplicate[1] == "exact" else "near_duplicate"
            record.duplicate_of = duplicate[0]
            return
        index.add(record.id, record.text)

    def _seed_index(self) -> DuplicateIndex:
        seeds = DuplicateIndex(self.config.instructions.near_duplicate_threshold)
        for kind, type_seeds in self.pool.types.items():
            for i, text in enumerate(type_seeds.instructions):
                seeds.add(f"seed:{kind}:{i}", text)
            for i, example in enumerate(type_seeds.examples):
                seeds.add(f"seed:{kind}:example:{i}", example.instruction)
        return seeds

    async def _attempt(self, kind: InstructionType, attempt: int) -> _Generation | str:
        cfg = self.config.instructions
        iid = instruction_id(kind, attempt)
        seed = derive_seed(self.config.seed, iid, "instructions")
        template = self.templates["instructions"]
        prompt, _ = instructions.build_prompt(
            template, self.pool, kind, few_shot=cfg.few_shot, seed=seed
        )
        try:
            return await self._generate(
                "instructions", prompt, self._sampling(cfg.sampling, template, seed), (0, attempt)
            )
        except RequestFailed as exc:
            return str(exc)

    async def _read_file(self) -> None:
        cfg = self.config.instructions
        file = self.store.files["instructions"]
        index = DuplicateIndex(cfg.near_duplicate_threshold)
        counters: Counter[str] = Counter()
        for given_id, kind, text in self._file_rows:
            iid = given_id or instruction_id(kind, counters[kind])
            counters[kind] += 1
            record = file.get(iid)
            if record is None:
                record = InstructionRecord(
                    id=iid,
                    instruction_id=iid,
                    type=kind,
                    attempt=counters[kind] - 1,
                    source="file",
                    text=text,
                )
                duplicate = index.find(text)
                if duplicate is not None:
                    record.status = "rejected"
                    record.reason = "duplicate" if duplicate[1] == "exact" else "near_duplicate"
                    record.duplicate_of = duplicate[0]
                self._write("instructions", record)
            if record.status == "ok":
                index.add(iid, text)
                self._start_chain(record)
                if self._chain_seq % CHAINS_BETWEEN_YIELDS == 1:
                    await asyncio.sleep(0)

    # ---- chains -------------------------------------------------------------------------

    def _start_chain(self, instruction: InstructionRecord) -> None:
        self._chain_seq += 1
        task = asyncio.create_task(self._chain(instruction, self._chain_seq))
        self._chains.add(task)
        task.add_done_callback(self._chain_done)
        for step in STEPS[1:]:
            self.progress.planned(step, 1)

    def _chain_done(self, task: asyncio.Task[None]) -> None:
        self._chains.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("chain failed: %r", task.exception())

    async def _chain(self, instruction: InstructionRecord, seq: int) -> None:
        files = self.store.files
        iid = instruction.id
        original = files["responses"].get(response_id(iid)) or await self._respond(instruction, seq)
        if original.status != "ok":
            return
        current: GeneratedRecord = original
        for round_ in range(1, self.config.critiques.rounds + 1):
            critique = files["critiques"].get(critique_id(iid, round_)) or await self._critique(
                instruction, current, round_, seq
            )
            if critique.status != "ok":
                return
            revision = files["revisions"].get(revision_id(iid, round_)) or await self._revise(
                instruction, current, critique, round_, seq
            )
            if revision.status != "ok":
                return
            current = revision
        judgement = files["judgements"].get(judgement_id(iid)) or await self._judge(
            instruction, original, current, seq
        )
        if judgement.status != "ok":
            return
        if pair_id(iid) not in files["pairs"]:
            self._write("pairs", self._pair(instruction, original, current, judgement))

    async def _step(
        self,
        step: str,
        record: GeneratedRecord,
        prompt: str,
        stop: list[str],
        priority: Priority,
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        """Generate `record`'s text; `check(text)` names why it is unusable (then rejected)."""
        assert record.sampling is not None
        try:
            generation = await self._generate(step, prompt, record.sampling, priority)
        except RequestFailed as exc:
            record.status, record.reason = "failed", str(exc)
        else:
            record.text = responses.parse(generation.choice.text, stop)
            record.finish_reason = generation.choice.finish_reason
            record.usage = generation.usage
            reason = check(record.text) if check is not None else None
            if reason is not None:
                record.status, record.reason = "rejected", reason
        self._write(step, record)

    async def _respond(self, instruction: InstructionRecord, seq: int) -> ResponseRecord:
        cfg = self.config.responses
        template = self.templates["responses"]
        rid = response_id(instruction.id)
        seed = derive_seed(self.config.seed, rid, "responses")
        prompt, shown = responses.build_prompt(
            template,
            self.pool,
            instruction.type,
            instruction.text,
            few_shot=cfg.few_shot,
            seed=seed,
        )
        sampling = self._sampling(cfg.sampling, template, seed)
        record = ResponseRecord(
            id=rid,
            instruction_id=instruction.id,
            parent_id=instruction.id,
            type=instruction.type,
            model=self.config.model,
            template=template.tag,
            sampling=sampling,
            few_shot=shown,
        )
        await self._step("responses", record, prompt, sampling.stop, (-1, seq))
        return record

    async def _critique(
        self, instruction: InstructionRecord, target: GeneratedRecord, round_: int, seq: int
    ) -> CritiqueRecord:
        cfg = self.config.critiques
        template = self.templates["critiques"]
        cid = critique_id(instruction.id, round_)
        principle = critiques.pick_principle(
            self.constitution, self.config.seed, instruction.id, round_, list(cfg.principle_tags)
        )
        seed = derive_seed(self.config.seed, cid, "critiques")
        prompt = critiques.build_prompt(
            template,
            self.pool,
            self.constitution,
            instruction.text,
            target.text,
            principle,
            few_shot=cfg.few_shot,
        )
        sampling = self._sampling(cfg.sampling, template, seed)

        def check(text: str) -> str | None:
            return critiques.problem(text, principle, target.text)

        record = CritiqueRecord(
            id=cid,
            instruction_id=instruction.id,
            parent_id=target.id,
            target_id=target.id,
            round=round_,
            principle_id=principle.id,
            model=self.config.model,
            template=template.tag,
            sampling=sampling,
        )
        await self._step("critiques", record, prompt, sampling.stop, (-2 * round_, seq), check)
        return record

    async def _revise(
        self,
        instruction: InstructionRecord,
        target: GeneratedRecord,
        critique: CritiqueRecord,
        round_: int,
        seq: int,
    ) -> RevisionRecord:
        cfg = self.config.revisions
        template = self.templates["revisions"]
        vid = revision_id(instruction.id, round_)
        principle = self.constitution.get(critique.principle_id)
        seed = derive_seed(self.config.seed, vid, "revisions")
        prompt = revisions.build_prompt(
            template,
            self.pool,
            self.constitution,
            instruction.text,
            target.text,
            critique.text,
            principle,
            few_shot=cfg.few_shot,
        )
        sampling = self._sampling(cfg.sampling, template, seed)
        record = RevisionRecord(
            id=vid,
            instruction_id=instruction.id,
            parent_id=critique.id,
            critique_id=critique.id,
            round=round_,
            principle_id=principle.id,
            model=self.config.model,
            template=template.tag,
            sampling=sampling,
        )
        await self._step("revisions", record, prompt, sampling.stop, (-2 * round_ - 1, seq))
        return record

    # ---- judgements and pairs -----------------------------------------------------------

    async def _judge(
        self,
        instruction: InstructionRecord,
        original: ResponseRecord,
        revision: GeneratedRecord,
        seq: int,
    ) -> JudgementRecord:
        jid = judgement_id(instruction.id)
        priority = (-2 * self.config.critiques.rounds - 2, seq)
        record = JudgementRecord(
            id=jid,
            instruction_id=instruction.id,
            parent_id=revision.id,
            model=self.config.judge_model(),
            template=self.templates["judge"].tag,
            ok_rule=self.config.judge.ok_rule,
            original=Verdict(
                response_id=original.id, rules={}, rules_ok=False, truncated=False, ok=False
            ),
            revision=Verdict(
                response_id=revision.id, rules={}, rules_ok=False, truncated=False, ok=False
            ),
        )
        try:
            record.original, record.revision = await asyncio.gather(
                self._verdict(instruction, original, jid, "original", priority),
                self._verdict(instruction, revision, jid, "revision", priority),
            )
        except RequestFailed as exc:
            record.status, record.reason = "failed", str(exc)
        self._write("judgements", record)
        return record

    async def _verdict(
        self,
        instruction: InstructionRecord,
        response: GeneratedRecord,
        jid: str,
        which: str,
        priority: Priority,
    ) -> Verdict:
        results = rules.check(
            instruction.type,
            instruction.text,
            response.text,
            response.finish_reason,
            self.config.rules,
        )
        prompts = judgements.build_queries(
            self.templates["judge"], instruction.text, response.text, swap=self.config.judge.swap
        )
        queries = await asyncio.gather(
            *(
                self._ask_judge(p, derive_seed(self.config.seed, jid, which, i), priority)
                for i, p in enumerate(prompts)
            )
        )
        return judgements.combine(
            response_id=response.id,
            rules=results,
            truncated=response.finish_reason == "length",
            queries=list(queries),
            config=self.config.judge,
        )

    async def _ask_judge(
        self, query: judgements.JudgePrompt, seed: int, priority: Priority
    ) -> JudgeQuery:
        cfg = self.config.judge
        try:
            return await judgements.ask(
                functools.partial(self.judge_caller.complete, priority=priority),
                query,
                model=self.config.judge_model(),
                labels=self._labels,
                method=cfg.method,
                top_logprobs=cfg.top_logprobs,
                seed=seed,
                count=functools.partial(self._count, "judgements"),
            )
        except judgements.JudgeAnswerError as exc:
            raise RequestFailed(str(exc)) from exc

    def _pair(
        self,
        instruction: InstructionRecord,
        original: ResponseRecord,
        revision: GeneratedRecord,
        judgement: JudgementRecord,
    ) -> PairRecord:
        decision = pairs.decide(
            original.text, revision.text, judgement.original.ok, judgement.revision.ok
        )
        record = PairRecord(
            id=pair_id(instruction.id),
            instruction_id=instruction.id,
            parent_id=judgement.id,
            type=instruction.type,
            rule=decision.rule,
            judgement_id=judgement.id,
        )
        if decision.skipped:
            record.status, record.reason = "skipped", decision.rule
            return record
        chosen, rejected = (
            (revision, original) if decision.chosen == "revision" else (original, revision)
        )
        chosen_v, rejected_v = (
            (judgement.revision, judgement.original)
            if decision.chosen == "revision"
            else (judgement.original, judgement.revision)
        )
        record.prompt = responses.pair_prompt(self.templates["responses"], instruction.text)
        record.chosen, record.rejected = chosen.text, rejected.text
        record.chosen_id, record.rejected_id = chosen.id, rejected.id
        record.chosen_margin, record.rejected_margin = (
            chosen_v.judge_margin,
            rejected_v.judge_margin,
        )
        return record

    # ---- split --------------------------------------------------------------------------

    def _split(self) -> dict[str, int]:
        made = {pid: p for pid, p in self.store.files["pairs"].records.items() if p.status == "ok"}
        texts = {r.id: r.text for r in self.store.files["instructions"].records.values()}
        assignment, groups = split_groups(
            {pid: p.instruction_id for pid, p in made.items()},
            texts,
            train_ratio=self.config.split.train_ratio,
            seed=derive_seed(self.config.seed, "split"),
            group_threshold=self.config.split.group_threshold,
            grouper=self._groups,
        )
        rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        for pid in sorted(made):
            pair = made[pid]
            row = PreferencePair.model_validate(
                {
                    "prompt": pair.prompt,
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "id": pid,
                    "instruction_id": pair.instruction_id,
                    "type": pair.type,
                    "rule": pair.rule,
                    "chosen_id": pair.chosen_id,
                    "rejected_id": pair.rejected_id,
                    "chosen_margin": pair.chosen_margin,
                    "rejected_margin": pair.rejected_margin,
                    "group": groups[pair.instruction_id],
                    "model": self.config.model,
                }
            )
            rows[assignment[pid]].append(row.model_dump(mode="json"))
        for name, split_rows in rows.items():
            write_jsonl_atomic(self.store.path(name), split_rows)
        return {name: len(split_rows) for name, split_rows in rows.items()}


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
) -> RunSummary:
    """Run (or resume) the pipeline of `config` into `run_dir`; return its summary.

    `config.model` names what generates (the base, or a stage's adapter as vLLM serves it).
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
