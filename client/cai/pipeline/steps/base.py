"""What a step of a chain is, and what the runner gives it.

    class Echo(Step):                        # a step: one module, tests/unit/pipeline/test_extra_step.py
        name, record_type = "echoes", EchoRecord
        def record_id(self, chain): ...
        async def make(self, run, chain, priority): ...   # the request, and its parsed record

A chain (one per accepted instruction) runs its steps in order; each step writes one record
per chain (one per round inside `Rounds`). The runner looks the record up by `record_id`
first: a record already in the step file is reused, never asked for again. A record that is
not `ok` ends its chain there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from cai.generator.types import Choice, CompletionResult
from cai.pipeline.config import PipelineConfig
from cai.pipeline.constitution import Constitution
from cai.pipeline.endpoints import Priority, RequestFailed
from cai.pipeline.prompts import Template
from cai.pipeline.responses import parse
from cai.pipeline.schema import GeneratedRecord, InstructionRecord, Record, Sampling, TokenUsage
from cai.pipeline.sections import SamplingConfig
from cai.pipeline.seeds import SeedPool

G = TypeVar("G", bound=GeneratedRecord)


@dataclass
class Generation:
    choice: Choice
    usage: TokenUsage


@dataclass
class StepContext:
    """What every step may use: the run's config and inputs, and the two callers."""

    config: PipelineConfig
    templates: dict[str, Template]
    pool: SeedPool
    constitution: Constitution
    # generate(step, prompt, sampling, priority): one completion of the generating model,
    # its tokens counted for `step`.
    generate: Callable[[str, str, Sampling, Priority], Awaitable[Generation]]
    # The judge's `complete(prompts, priority=..., **params)`, and the token tally.
    complete_judge: Callable[..., Awaitable[CompletionResult]]
    count: Callable[[str, CompletionResult], TokenUsage]
    judge_labels: tuple[str, str]  # the judge template's A/B tokens, read once


@dataclass
class Chain:
    """One instruction's way through the steps: what later steps read from earlier ones."""

    instruction: InstructionRecord
    seq: int
    round: int = 0
    original: GeneratedRecord | None = None  # the response
    current: GeneratedRecord | None = None  # the text being improved: response, then revisions
    records: dict[str, Record] = field(default_factory=dict)  # the latest record of each step

    @property
    def iid(self) -> str:
        return self.instruction.id


class Step:
    """One step: its record type, its record id in a chain, and how the record is made."""

    name: ClassVar[str]
    record_type: ClassVar[type[Record]]

    def record_id(self, chain: Chain) -> str:
        raise NotImplementedError

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        """The step's record for `chain` (not `ok` when its request failed or was unusable)."""
        raise NotImplementedError

    def advance(self, chain: Chain, record: Record) -> None:
        """Note an `ok` record (new, or read back on resume) where later steps read it."""
        chain.records[self.name] = record


@dataclass(frozen=True)
class Rounds:
    """Steps repeated `count(config)` times in a row (critique -> revision rounds)."""

    steps: tuple[Step, ...]
    count: Callable[[PipelineConfig], int]


def sampling(cfg: SamplingConfig, template: Template, seed: int) -> Sampling:
    """A request's sampling parameters: the config's, with the template's stop strings unless
    the config names its own."""
    stop = cfg.stop if cfg.stop is not None else list(template.stop)
    return Sampling(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
        stop=stop,
        seed=seed,
    )


async def generated(
    run: StepContext,
    step: str,
    record: G,
    prompt: str,
    priority: Priority,
    check: Callable[[str], str | None] | None = None,
) -> G:
    """Fill `record`'s text from one completion; `check(text)` names why it is unusable
    (then the record is rejected), a request that kept failing leaves it failed."""
    assert record.sampling is not None
    try:
        generation = await run.generate(step, prompt, record.sampling, priority)
    except RequestFailed as exc:
        record.status, record.reason = "failed", str(exc)
        return record
    record.text = parse(generation.choice.text, record.sampling.stop)
    record.finish_reason = generation.choice.finish_reason
    record.usage = generation.usage
    reason = check(record.text) if check is not None else None
    if reason is not None:
        record.status, record.reason = "rejected", reason
    return record
