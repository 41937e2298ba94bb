"""Step 5: a verdict on the original response and on the final revision (rules and the model
judge: cai.pipeline.rules, cai.pipeline.judgements)."""

from __future__ import annotations

import asyncio
import functools
from typing import ClassVar

from cai.pipeline import judgements, rules
from cai.pipeline.endpoints import Priority, RequestFailed
from cai.pipeline.schema import (
    GeneratedRecord,
    JudgeQuery,
    Record,
    Verdict,
    derive_seed,
    judgement_id,
)
from cai.pipeline.steps.base import Chain, Step, StepContext


class JudgementRecord(Record):
    model: str | None = None
    template: str | None = None
    ok_rule: str
    original: Verdict
    revision: Verdict


def _unasked(response_id: str) -> Verdict:
    return Verdict(response_id=response_id, rules={}, rules_ok=False, truncated=False, ok=False)


class Judgements(Step):
    name: ClassVar[str] = "judgements"
    record_type: ClassVar[type[Record]] = JudgementRecord

    def record_id(self, chain: Chain) -> str:
        return judgement_id(chain.iid)

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        original, revision = chain.original, chain.current
        assert original is not None and revision is not None
        jid = self.record_id(chain)
        record = JudgementRecord(
            id=jid,
            instruction_id=chain.iid,
            parent_id=revision.id,
            model=run.config.judge_model(),
            template=run.templates["judge"].tag,
            ok_rule=run.config.judge.ok_rule,
            original=_unasked(original.id),
            revision=_unasked(revision.id),
        )
        try:
            record.original, record.revision = await asyncio.gather(
                self._verdict(run, chain, original, jid, "original", priority),
                self._verdict(run, chain, revision, jid, "revision", priority),
            )
        except RequestFailed as exc:
            record.status, record.reason = "failed", str(exc)
        return record

    async def _verdict(
        self,
        run: StepContext,
        chain: Chain,
        response: GeneratedRecord,
        jid: str,
        which: str,
        priority: Priority,
    ) -> Verdict:
        config, instruction = run.config, chain.instruction
        results = rules.check(
            instruction.type,
            instruction.text,
            response.text,
            response.finish_reason,
            config.rules,
        )
        prompts = judgements.build_queries(
            run.templates["judge"], instruction.text, response.text, swap=config.judge.swap
        )
        queries = await asyncio.gather(
            *(
                self._ask(run, p, derive_seed(config.seed, jid, which, i), priority)
                for i, p in enumerate(prompts)
            )
        )
        return judgements.combine(
            response_id=response.id,
            rules=results,
            truncated=response.finish_reason == "length",
            queries=list(queries),
            config=config.judge,
        )

    async def _ask(
        self, run: StepContext, query: judgements.JudgePrompt, seed: int, priority: Priority
    ) -> JudgeQuery:
        cfg = run.config.judge
        try:
            return await judgements.ask(
                functools.partial(run.complete_judge, priority=priority),
                query,
                model=run.config.judge_model(),
                labels=run.judge_labels,
                method=cfg.method,
                top_logprobs=cfg.top_logprobs,
                seed=seed,
                count=functools.partial(run.count, self.name),
            )
        except judgements.JudgeAnswerError as exc:
            raise RequestFailed(str(exc)) from exc
