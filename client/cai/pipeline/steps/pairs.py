"""Step 6: a preference pair from the judgement, or its skip reason (the rules:
cai.pipeline.pairs). No request: the pair's texts are the chain's own records."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cai.pipeline import pairs, responses
from cai.pipeline.endpoints import Priority
from cai.pipeline.schema import InstructionType, Record, pair_id
from cai.pipeline.steps.base import Chain, Step, StepContext
from cai.pipeline.steps.judgements import JudgementRecord


class PairRecord(Record):
    """A preference pair (status ok) or the reason none was made (status skipped)."""

    type: InstructionType
    rule: str | None = Field(default=None, description="Which pair rule chose.")
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    chosen_id: str | None = None
    rejected_id: str | None = None
    judgement_id: str
    chosen_margin: float | None = None
    rejected_margin: float | None = None


class Pairs(Step):
    name: ClassVar[str] = "pairs"
    record_type: ClassVar[type[Record]] = PairRecord

    def record_id(self, chain: Chain) -> str:
        return pair_id(chain.iid)

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        original, revision = chain.original, chain.current
        judgement = chain.records["judgements"]
        assert original is not None and revision is not None
        assert isinstance(judgement, JudgementRecord)
        decision = pairs.decide(
            original.text, revision.text, judgement.original.ok, judgement.revision.ok
        )
        record = PairRecord(
            id=self.record_id(chain),
            instruction_id=chain.iid,
            parent_id=judgement.id,
            type=chain.instruction.type,
            rule=decision.rule,
            judgement_id=judgement.id,
        )
        if decision.skipped:
            record.status, record.reason = "skipped", decision.rule
            return record
        revision_chosen = decision.chosen == "revision"
        chosen, rejected = (revision, original) if revision_chosen else (original, revision)
        chosen_v, rejected_v = (
            (judgement.revision, judgement.original)
            if revision_chosen
            else (judgement.original, judgement.revision)
        )
        record.prompt = responses.pair_prompt(run.templates["responses"], chain.instruction.text)
        record.chosen, record.rejected = chosen.text, rejected.text
        record.chosen_id, record.rejected_id = chosen.id, rejected.id
        record.chosen_margin, record.rejected_margin = (
            chosen_v.judge_margin,
            rejected_v.judge_margin,
        )
        return record
