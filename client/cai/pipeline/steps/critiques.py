"""Step 3: the model critiques the current text against one sampled principle (prompt,
principle and the check that a critique says something: cai.pipeline.critiques)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cai.pipeline import critiques
from cai.pipeline.endpoints import Priority
from cai.pipeline.schema import GeneratedRecord, Record, critique_id, derive_seed
from cai.pipeline.steps.base import Chain, Step, StepContext, generated, sampling


class CritiqueRecord(GeneratedRecord):
    round: int
    principle_id: str
    target_id: str = Field(description="The response or revision that was critiqued.")


class Critiques(Step):
    name: ClassVar[str] = "critiques"
    record_type: ClassVar[type[Record]] = CritiqueRecord

    def record_id(self, chain: Chain) -> str:
        return critique_id(chain.iid, chain.round)

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        cfg = run.config.critiques
        template = run.templates["critiques"]
        target = chain.current
        assert target is not None
        cid = self.record_id(chain)
        principle = critiques.pick_principle(
            run.constitution, run.config.seed, chain.iid, chain.round, list(cfg.principle_tags)
        )
        seed = derive_seed(run.config.seed, cid, self.name)
        prompt = critiques.build_prompt(
            template,
            run.pool,
            run.constitution,
            chain.instruction.text,
            target.text,
            principle,
            few_shot=cfg.few_shot,
        )
        record = CritiqueRecord(
            id=cid,
            instruction_id=chain.iid,
            parent_id=target.id,
            target_id=target.id,
            round=chain.round,
            principle_id=principle.id,
            model=run.config.model,
            template=template.tag,
            sampling=sampling(cfg.sampling, template, seed),
        )

        def check(text: str) -> str | None:
            return critiques.problem(text, principle, target.text)

        return await generated(run, self.name, record, prompt, priority, check)
