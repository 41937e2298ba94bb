"""The steps of a chain, in order: the one place a step is registered.

    PIPELINE.chain       # responses, (critiques, revisions) x critiques.rounds, judgements, pairs
    PIPELINE.names       # the step files of a run folder: instructions first

Each accepted instruction starts a chain over `PIPELINE.chain` (cai.pipeline.runner); the
instructions themselves come from the producer (cai.pipeline.steps.instructions). A new
step is one module (a `Step`: its record type, its record id, how its request is built and
its answer parsed) and one line in `DEFAULT_CHAIN`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai.pipeline.schema import InstructionRecord, Record
from cai.pipeline.steps.base import Rounds, Step
from cai.pipeline.steps.critiques import Critiques
from cai.pipeline.steps.judgements import Judgements
from cai.pipeline.steps.pairs import Pairs
from cai.pipeline.steps.responses import Responses
from cai.pipeline.steps.revisions import Revisions

SOURCE = "instructions"


@dataclass(frozen=True)
class Pipeline:
    """The chain every accepted instruction runs, steps or `Rounds` of steps, in order."""

    chain: tuple[Step | Rounds, ...]

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(
            s for part in self.chain for s in (part.steps if isinstance(part, Rounds) else (part,))
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (SOURCE, *(step.name for step in self.steps))

    @property
    def record_types(self) -> dict[str, type[Record]]:
        return {SOURCE: InstructionRecord, **{step.name: step.record_type for step in self.steps}}


DEFAULT_CHAIN: tuple[Step | Rounds, ...] = (
    Responses(),
    Rounds((Critiques(), Revisions()), lambda config: config.critiques.rounds),
    Judgements(),
    Pairs(),
)
PIPELINE = Pipeline(DEFAULT_CHAIN)
