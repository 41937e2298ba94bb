"""Step 1: the instructions every chain starts from, generated or read from a file (prompt
and parser: cai.pipeline.instructions).

    producer = InstructionProducer(run, done, heldout, write=..., start_chain=..., progress=...)
    await producer.produce()        # source: generate
    await producer.read_file(rows)  # source: file

Decisions (accept, or reject as a duplicate of an earlier one) are taken in one fixed order,
attempt by attempt and type by type: the next decision is always the active type with the
smallest (next attempt, type order). Answers that come back early wait for their turn. So
duplicates are found across types, the outcome does not depend on timing, and a resumed run
continues the same sequence from what the file holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from cai.pipeline import instructions
from cai.pipeline.dedupe import DuplicateIndex
from cai.pipeline.endpoints import RequestFailed
from cai.pipeline.heldout import HeldoutGuard
from cai.pipeline.schema import (
    INSTRUCTION_TYPES,
    InstructionRecord,
    InstructionType,
    derive_seed,
    instruction_id,
)
from cai.pipeline.seeds import SeedPool
from cai.pipeline.steps.base import Generation, StepContext, sampling

logger = logging.getLogger(__name__)

NAME = "instructions"
# Reading a file, the runner lets the chains it started send their first requests after the
# first instruction and then every this many: the generator is busy at once instead of after
# the whole file is de-duplicated (0.6 s for 2,858 instructions), and the event loop is not
# woken for every line (yielding after each cost the client 15% of its completions/s;
# docs/benchmarks.md, items 1 and 2).
CHAINS_BETWEEN_YIELDS = 64


class Planned(Protocol):
    def planned(self, step: str, total: int) -> None: ...


def judge_instruction(
    record: InstructionRecord,
    problem: str | None,
    index: DuplicateIndex,
    seeds: DuplicateIndex,
    heldout: HeldoutGuard,
) -> None:
    """Reject `record` (unusable, a held-out question, a seed, a duplicate) or accept it into
    `index`."""
    if problem is not None:
        record.status, record.reason = "rejected", problem
        return
    if heldout.match(record.text) is not None:
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


def seed_index(pool: SeedPool, threshold: float) -> DuplicateIndex:
    """The seed pool's instructions and examples: a generated copy of one is rejected."""
    seeds = DuplicateIndex(threshold)
    for kind, type_seeds in pool.types.items():
        for i, text in enumerate(type_seeds.instructions):
            seeds.add(f"seed:{kind}:{i}", text)
        for i, example in enumerate(type_seeds.examples):
            seeds.add(f"seed:{kind}:example:{i}", example.instruction)
    return seeds


class InstructionProducer:
    """Writes the instruction records and starts a chain for each accepted one."""

    def __init__(
        self,
        run: StepContext,
        done: dict[str, InstructionRecord],
        heldout: HeldoutGuard,
        *,
        write: Callable[[str, Any], None],
        start_chain: Callable[[InstructionRecord], int],
        progress: Planned,
    ) -> None:
        self.run = run
        self.done = done  # the instruction file's records by id (the store keeps it current)
        self.heldout = heldout
        self.write = write
        self.start_chain = start_chain
        self.progress = progress

    async def produce(self) -> None:
        """Generate instructions until every type has its count (or ran out of attempts).

        Attempts missing below a type's last one (failed attempts dropped for a retry) are
        asked again first, each decided against every instruction already accepted: a
        request that failed is retried, not counted as final.
        """
        config = self.run.config
        cfg = config.instructions
        kinds = [k for k in INSTRUCTION_TYPES if cfg.counts.get(k, 0) > 0]
        seeds = seed_index(self.run.pool, cfg.near_duplicate_threshold)
        index = DuplicateIndex(cfg.near_duplicate_threshold)
        target = {k: cfg.counts[k] for k in kinds}
        max_attempts = {k: math.ceil(target[k] * cfg.max_attempts_factor) for k in kinds}
        accepted: Counter[str] = Counter()
        decided: Counter[str] = Counter()
        present: dict[str, set[int]] = {k: set() for k in kinds}
        for record in sorted(self.done.values(), key=lambda r: (r.attempt, r.type)):
            decided[record.type] += 1
            present.setdefault(record.type, set()).add(record.attempt)
            if record.status == "ok":
                index.add(record.id, record.text)
                accepted[record.type] += 1
                self.start_chain(record)
        # Per type, the attempts still to ask, in order: the holes, then the next new ones.
        frontier = {k: max(present[k], default=-1) + 1 for k in kinds}
        holes = {k: sorted(set(range(frontier[k])) - present[k], reverse=True) for k in kinds}
        for kind in kinds:
            self.progress.planned(NAME, target[kind])

        def next_attempt(kind: InstructionType) -> int:
            if holes[kind]:
                return holes[kind].pop()
            frontier[kind] += 1
            return frontier[kind] - 1

        launched = Counter(decided)
        tasks: dict[tuple[str, int], asyncio.Task[Generation | str]] = {}
        pending: dict[str, deque[int]] = {k: deque() for k in kinds}  # launched, undecided
        template = self.run.templates[NAME]
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
                seed = derive_seed(config.seed, iid, NAME)
                _, shown = instructions.build_prompt(
                    template, self.run.pool, kind, few_shot=cfg.few_shot, seed=seed
                )
                record = InstructionRecord(
                    id=iid,
                    instruction_id=iid,
                    type=kind,
                    attempt=attempt,
                    model=config.model,
                    template=template.tag,
                    sampling=sampling(cfg.sampling, template, seed),
                    few_shot=shown,
                )
                if isinstance(outcome, str):
                    record.status, record.reason = "failed", outcome
                else:
                    text, problem = instructions.parse(outcome.choice.text)
                    record.text = text
                    record.finish_reason = outcome.choice.finish_reason
                    record.usage = outcome.usage
                    judge_instruction(record, problem, index, seeds, self.heldout)
                self.write(NAME, record)
                decided[kind] += 1
                if record.status == "ok":
                    accepted[kind] += 1
                    self.start_chain(record)
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

    async def _attempt(self, kind: InstructionType, attempt: int) -> Generation | str:
        config = self.run.config
        cfg = config.instructions
        iid = instruction_id(kind, attempt)
        seed = derive_seed(config.seed, iid, NAME)
        template = self.run.templates[NAME]
        prompt, _ = instructions.build_prompt(
            template, self.run.pool, kind, few_shot=cfg.few_shot, seed=seed
        )
        try:
            return await self.run.generate(
                NAME, prompt, sampling(cfg.sampling, template, seed), (0, attempt)
            )
        except RequestFailed as exc:
            return str(exc)

    async def read_file(self, rows: list[tuple[str | None, InstructionType, str]]) -> None:
        """The instructions of a file, de-duplicated; a chain starts for each kept one."""
        index = DuplicateIndex(self.run.config.instructions.near_duplicate_threshold)
        counters: Counter[str] = Counter()
        for given_id, kind, text in rows:
            iid = given_id or instruction_id(kind, counters[kind])
            counters[kind] += 1
            record = self.done.get(iid)
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
                self.write(NAME, record)
            if record.status == "ok":
                index.add(iid, text)
                if self.start_chain(record) % CHAINS_BETWEEN_YIELDS == 1:
                    await asyncio.sleep(0)
