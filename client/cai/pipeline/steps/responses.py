"""Step 2: the model answers the instruction (prompt and parser: cai.pipeline.responses)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cai.pipeline import responses
from cai.pipeline.endpoints import Priority
from cai.pipeline.schema import GeneratedRecord, InstructionType, Record, derive_seed, response_id
from cai.pipeline.steps.base import Chain, Step, StepContext, generated, sampling


class ResponseRecord(GeneratedRecord):
    type: InstructionType
    few_shot: list[int] = Field(default_factory=list)


class Responses(Step):
    name: ClassVar[str] = "responses"
    record_type: ClassVar[type[Record]] = ResponseRecord

    def record_id(self, chain: Chain) -> str:
        return response_id(chain.iid)

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        cfg = run.config.responses
        template = run.templates["responses"]
        instruction = chain.instruction
        rid = self.record_id(chain)
        seed = derive_seed(run.config.seed, rid, self.name)
        prompt, shown = responses.build_prompt(
            template,
            run.pool,
            instruction.type,
            instruction.text,
            few_shot=cfg.few_shot,
            seed=seed,
        )
        record = ResponseRecord(
            id=rid,
            instruction_id=instruction.id,
            parent_id=instruction.id,
            type=instruction.type,
            model=run.config.model,
            template=template.tag,
            sampling=sampling(cfg.sampling, template, seed),
            few_shot=shown,
        )
        return await generated(run, self.name, record, prompt, priority)

    def advance(self, chain: Chain, record: Record) -> None:
        super().advance(chain, record)
        assert isinstance(record, ResponseRecord)
        chain.original = chain.current = record
