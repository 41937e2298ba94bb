"""Step 4: the model rewrites the current text following the round's critique (prompt:
cai.pipeline.revisions). Its record becomes the text the next round critiques."""

from __future__ import annotations

from typing import ClassVar

from cai.pipeline import revisions
from cai.pipeline.endpoints import Priority
from cai.pipeline.schema import GeneratedRecord, Record, derive_seed, revision_id
from cai.pipeline.steps.base import Chain, Step, StepContext, generated, sampling
from cai.pipeline.steps.critiques import CritiqueRecord


class RevisionRecord(GeneratedRecord):
    round: int
    principle_id: str
    critique_id: str


class Revisions(Step):
    name: ClassVar[str] = "revisions"
    record_type: ClassVar[type[Record]] = RevisionRecord

    def record_id(self, chain: Chain) -> str:
        return revision_id(chain.iid, chain.round)

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        cfg = run.config.revisions
        template = run.templates["revisions"]
        target, critique = chain.current, chain.records["critiques"]
        assert target is not None and isinstance(critique, CritiqueRecord)
        vid = self.record_id(chain)
        principle = run.constitution.get(critique.principle_id)
        seed = derive_seed(run.config.seed, vid, self.name)
        prompt = revisions.build_prompt(
            template,
            run.pool,
            run.constitution,
            chain.instruction.text,
            target.text,
            critique.text,
            principle,
            few_shot=cfg.few_shot,
        )
        record = RevisionRecord(
            id=vid,
            instruction_id=chain.iid,
            parent_id=critique.id,
            critique_id=critique.id,
            round=chain.round,
            principle_id=principle.id,
            model=run.config.model,
            template=template.tag,
            sampling=sampling(cfg.sampling, template, seed),
        )
        return await generated(run, self.name, record, prompt, priority)

    def advance(self, chain: Chain, record: Record) -> None:
        super().advance(chain, record)
        assert isinstance(record, RevisionRecord)
        chain.current = record
