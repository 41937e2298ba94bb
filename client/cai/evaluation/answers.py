"""One held-out instruction answered by the model under evaluation, then scored.

    evaluator = AnswerEvaluator(gen, gen, stage=1, model="stage1-j1", judge_model="tiny",
                                pipeline=config, heldout=heldout, settings=EvalSettings())
    record = await evaluator.evaluate(heldout.instructions[0])   # an `EvalRecord`

The model answers with the pipeline's own response prompt (the `responses` template, the same
few-shot examples for every stage, chosen by a seed derived from the instruction id; the
template's stop strings; greedy decoding). The answer then gets the pipeline's rule checks,
plus a reference-fact check where the held-out item names one (`mentions_reference`), and the
model judge, asked exactly as the pipeline asks it. The two verdicts are kept apart.

A failed request does not raise: the record says `failed` and why, and is retried on the next
run.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from cai.evaluation.records import EvalRecord, eval_record_id
from cai.evaluation.settings import EvalSettings, EvaluationError
from cai.generator import GeneratorClient, GeneratorError
from cai.pipeline import judgements, responses, rules
from cai.pipeline.config import PipelineConfig
from cai.pipeline.heldout import HeldoutInstruction, HeldoutSet
from cai.pipeline.prompts import Template, load_template
from cai.pipeline.records import JudgeQuery, derive_seed
from cai.pipeline.seeds import SeedPool, load_seed_pool

REFERENCE_RULE = "mentions_reference"


def mentions_reference(response: str, reference: list[str]) -> bool:
    """Any reference fact appears in the response as whole words, ignoring case."""
    text = response.casefold()
    for fact in reference:
        pattern = re.escape(fact.casefold())
        if re.search(rf"(?<!\w){pattern}(?!\w)", text):
            return True
    return False


async def ask_judge(
    judge: GeneratorClient,
    query: judgements.JudgePrompt,
    *,
    model: str,
    labels: tuple[str, str],
    top_logprobs: int,
    seed: int,
) -> JudgeQuery:
    """One A/B question, read exactly as the pipeline's judge reads it (`method: auto`)."""
    try:
        return await judgements.ask(
            judge.complete,
            query,
            model=model,
            labels=labels,
            method="auto",
            top_logprobs=top_logprobs,
            seed=seed,
        )
    except judgements.JudgeAnswerError as exc:
        raise EvaluationError(str(exc)) from exc


class AnswerEvaluator:
    """Answers and scores held-out instructions for one stage's model (templates loaded once)."""

    def __init__(
        self,
        gen: GeneratorClient,
        judge: GeneratorClient,
        *,
        stage: int,
        model: str,
        judge_model: str,
        pipeline: PipelineConfig,
        heldout: HeldoutSet,
        settings: EvalSettings,
    ) -> None:
        self.gen = gen
        self.judge = judge
        self.stage = stage
        self.model = model
        self.judge_model = judge_model
        self.pipeline = pipeline
        self.heldout = heldout
        self.settings = settings
        templates_dir = Path(pipeline.templates_dir) if pipeline.templates_dir else None
        self.template: Template = load_template("responses", templates_dir)
        self.judge_template: Template = load_template("judge", templates_dir)
        self.labels = judgements.labels(self.judge_template)
        self.pool: SeedPool = load_seed_pool(
            Path(pipeline.seed_pool) if pipeline.seed_pool else None
        )
        self.few_shot = (
            settings.few_shot if settings.few_shot is not None else pipeline.responses.few_shot
        )
        self.stop = list(pipeline.responses.sampling.stop or self.template.stop)

    async def evaluate(self, item: HeldoutInstruction) -> EvalRecord:
        seed = derive_seed(self.settings.seed, item.id, "eval")
        # The same examples for every stage: the prompt differs only by the model answering.
        prompt, _ = responses.build_prompt(
            self.template, self.pool, item.type, item.instruction, few_shot=self.few_shot, seed=seed
        )
        record = EvalRecord(
            id=eval_record_id(self.stage, item.id),
            instruction_id=item.id,
            heldout_version=self.heldout.version,
            type=item.type,
            instruction=item.instruction,
            stage=self.stage,
            model=self.model,
            template=self.template.tag,
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
            seed=seed,
            stop=self.stop,
        )
        try:
            result = await self.gen.complete(
                [prompt],
                model=self.model,
                max_tokens=self.settings.max_tokens,
                temperature=self.settings.temperature,
                stop=self.stop,
                seed=seed,
            )
        except GeneratorError as exc:
            record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
            return record
        choice = result.choices[0][0]
        record.response = responses.parse(choice.text, self.stop)
        record.finish_reason = choice.finish_reason
        record.response_tokens = result.usage.completion_tokens
        checks = rules.check(
            item.type, item.instruction, record.response, choice.finish_reason, self.pipeline.rules
        )
        if item.reference:
            checks[REFERENCE_RULE] = mentions_reference(record.response, item.reference)
        record.rules = checks
        record.rule_ok = rules.rules_ok(checks)
        if self.settings.judge:
            try:
                queries = await asyncio.gather(
                    *(
                        ask_judge(
                            self.judge,
                            query,
                            model=self.judge_model,
                            labels=self.labels,
                            top_logprobs=self.pipeline.judge.top_logprobs,
                            seed=derive_seed(self.settings.seed, item.id, "eval-judge", i),
                        )
                        for i, query in enumerate(
                            judgements.build_queries(
                                self.judge_template,
                                item.instruction,
                                record.response,
                                swap=self.pipeline.judge.swap,
                            )
                        )
                    )
                )
            except (GeneratorError, EvaluationError) as exc:
                record.status, record.reason = "failed", f"judge: {type(exc).__name__}: {exc}"
                return record
            margin = judgements.margin(list(queries))
            record.judge_margin = round(margin, 6)
            record.judge_ok = margin > self.pipeline.judge.threshold
        return record


__all__ = ["REFERENCE_RULE", "AnswerEvaluator", "ask_judge", "mentions_reference"]
