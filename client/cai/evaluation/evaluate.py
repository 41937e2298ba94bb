"""Evaluate one served model (the base or a stage's adapter) on the held-out set.

    async with GeneratorClient(url) as gen:
        baseline = await evaluate_stage(gen, run_dir, stage=0, model="tiny", base_model="tiny",
                                        pipeline=config)
        stage1 = await evaluate_stage(gen, run_dir, stage=1, model="stage1-job-ab12",
                                      base_model="tiny", pipeline=config,
                                      test_pairs=run_dir / "stages/1/test.jsonl")

For every held-out instruction the model answers with the pipeline's own response prompt
(the `responses` template, the same few-shot examples for every stage, chosen by a seed
derived from the instruction id; the template's stop strings; greedy decoding), then the
answer gets the pipeline's rule checks plus a reference-fact check where the held-out item
names one (`mentions_reference`), and the model judge. The two verdicts are kept apart.

The judge is fixed across stages: the configured judge model (`judge.model`) or else the
base, never the adapter under evaluation, so judge rates of different stages compare.

Records are appended to `runs/<name>/eval.jsonl` one by one (`s<stage>.<instruction id>`);
started again, the function evaluates only what is missing and retries what failed, so the
baseline (stage 0) is computed once per run folder and then read back. The summary
(`EvalSummary`: per-type Wilson intervals for rules and judge, McNemar against the base and
the previous stage, held-out pair accuracy, lengths) is written to
`stages/<N>/eval_summary.json` and returned for the manifest.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cai.evaluation.pair_accuracy import (
    PairAccuracy,
    Tokenizer,
    VllmTokenizer,
    load_pairs,
    pair_accuracy,
    resolve_eos_token,
)
from cai.evaluation.records import (
    EvalRecord,
    EvalSummary,
    eval_record_id,
    summarize_stage,
)
from cai.generator import GeneratorClient, GeneratorError
from cai.pipeline import judgements, responses, rules
from cai.pipeline.config import PipelineConfig
from cai.pipeline.heldout import HeldoutInstruction, HeldoutSet, load_heldout
from cai.pipeline.prompts import Template, load_template
from cai.pipeline.records import JudgeQuery, derive_seed
from cai.pipeline.seeds import SeedPool, load_seed_pool
from cai.pipeline.store import StepFile
from cai.runfolder import EVAL_FILE, EVAL_SUMMARY_FILE, PAIR_SCORES_FILE, stage_folder, write_atomic
from protocol.datasets import PreferencePair

logger = logging.getLogger(__name__)

REFERENCE_RULE = "mentions_reference"


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to change."""


class EvalSettings(BaseModel):
    """Knobs of the held-out evaluation (the `evaluation:` section of a `cai run` config)."""

    # A misspelt knob is refused, not ignored; `.inf` / `.nan` mean nothing for any of them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    heldout: str | None = Field(
        default=None, description="Held-out set file; None: the packaged heldout_v1.yaml."
    )
    max_tokens: int = Field(default=256, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(
        default=0.0, ge=0.0, description="0: greedy, so stages differ only by their weights."
    )
    seed: int = Field(
        default=0, ge=0, description="Picks the few-shot examples and sampling seeds."
    )
    few_shot: int | None = Field(
        default=None,
        ge=0,
        description="Examples before each instruction; None: the pipeline's responses.few_shot.",
    )
    concurrency: int = Field(default=16, ge=1, description="Instructions in flight.")
    beta: float = Field(default=0.1, gt=0.0, description="DPO beta of the implicit reward.")
    eos_token: str | None = Field(
        default="auto",
        description="Appended to chosen/rejected when scoring pairs, as TRL does in training. "
        "`auto`: read it from the served base model's folder (tokenizer_config.json) when "
        "visible from the client; a string: that text (e.g. '<|endoftext|>'); None: none.",
    )
    judge: bool = Field(default=True, description="Run the model judge (rules always run).")


def mentions_reference(response: str, reference: list[str]) -> bool:
    """Any reference fact appears in the response as whole words, ignoring case."""
    text = response.casefold()
    for fact in reference:
        pattern = re.escape(fact.casefold())
        if re.search(rf"(?<!\w){pattern}(?!\w)", text):
            return True
    return False


async def _ask_judge(
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


class _Evaluator:
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
                        _ask_judge(
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


def _stage_dir(run_dir: Path, stage: int) -> Path:
    folder = stage_folder(run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _read_pairs(test_pairs: Path) -> list[PreferencePair]:
    if not test_pairs.exists():
        logger.warning("no held-out pairs at %s: pair accuracy skipped", test_pairs)
        return []
    pairs = load_pairs(test_pairs)
    if not pairs:
        logger.warning("%s holds no pairs: pair accuracy skipped", test_pairs)
    return pairs


def _stage_records(file: StepFile[EvalRecord], stage: int) -> list[EvalRecord]:
    return [r for r in file.records.values() if r.stage == stage]


async def evaluate_stage(
    gen: GeneratorClient,
    run_dir: Path,
    *,
    stage: int,
    model: str,
    base_model: str,
    pipeline: PipelineConfig,
    judge: GeneratorClient | None = None,
    judge_model: str | None = None,
    test_pairs: Path | None = None,
    previous_stage: int | None = None,
    settings: EvalSettings | None = None,
    tokenizer: Tokenizer | None = None,
    heldout: HeldoutSet | None = None,
    reference_model: str | None = None,
) -> EvalSummary:
    """Evaluate `model` as stage `stage` (0 = the base) and return its summary.

    Args:
        gen: the generator serving `model` (and `base_model`, the pair-accuracy reference).
        run_dir: the run folder; `eval.jsonl` and `stages/<stage>/` are written there.
        pipeline: the pipeline config: templates, seed pool, rule and judge settings.
        judge / judge_model: a separate judge endpoint and model; default `gen` and
            `pipeline.judge.model` or else `base_model` (fixed across stages).
        test_pairs: held-out pairs (`test.jsonl`) for the implicit-reward accuracy.
        previous_stage: the stage to compare against besides the base (default stage - 1).
        tokenizer: for pair scoring; default vLLM's `/tokenize` on `gen.base_url`.
        reference_model: the implicit reward's reference; default `base_model`, so every
            stage is measured against the same model (pass the previous adapter to measure
            one iterative-DPO step against its own reference).
    """
    settings = settings or EvalSettings()
    heldout = heldout or load_heldout(settings.heldout)
    if stage < 0:
        raise EvaluationError(f"stage must be >= 0 (0 is the base), got {stage}")
    if stage == 0 and model != base_model:
        raise EvaluationError(f"stage 0 is the baseline: model must be the base {base_model!r}")
    stage_dir = _stage_dir(run_dir, stage)
    file: StepFile[EvalRecord] = StepFile(run_dir / EVAL_FILE, EvalRecord, pipeline.store)
    file.open()
    try:
        existing = _stage_records(file, stage)
        others = sorted({r.model for r in existing if r.model != model})
        if others:
            raise EvaluationError(
                f"{run_dir / EVAL_FILE} already holds stage {stage} answers from {others}, not "
                f"{model!r}; a retrained stage needs a new run folder (or remove those lines)"
            )
        versions = sorted({r.heldout_version for r in file.records.values()} - {heldout.version})
        if versions:
            raise EvaluationError(
                f"{run_dir / EVAL_FILE} was written with held-out set {versions}, not "
                f"{heldout.version!r}: results of different versions do not compare"
            )
        retried = file.drop(lambda r: r.stage == stage and r.status == "failed")
        if retried:
            logger.info("stage %d: retrying %d failed evaluations", stage, retried)
        todo = [
            item
            for item in heldout.instructions
            if eval_record_id(stage, item.id) not in file.records
        ]
        summary_path = stage_dir / EVAL_SUMMARY_FILE
        if not todo and stage == 0 and summary_path.exists():
            logger.info("baseline already evaluated: %s", summary_path)
            return EvalSummary.model_validate_json(summary_path.read_text(encoding="utf-8"))
        evaluator = _Evaluator(
            gen,
            judge or gen,
            stage=stage,
            model=model,
            judge_model=judge_model or pipeline.judge.model or base_model,
            pipeline=pipeline,
            heldout=heldout,
            settings=settings,
        )
        limit = asyncio.Semaphore(settings.concurrency)

        async def one(item: HeldoutInstruction) -> None:
            async with limit:
                record = await evaluator.evaluate(item)
            file.append(record)  # one line per answer: a kill loses at most the ones in flight

        await asyncio.gather(*(one(item) for item in todo))
        records = _stage_records(file, stage)
        base = _stage_records(file, 0) if stage > 0 else None
        if previous_stage is None and stage > 1:
            previous_stage = stage - 1
        previous = _stage_records(file, previous_stage) if previous_stage is not None else None
    finally:
        file.close()

    failed = [r for r in records if r.status == "failed"]
    if failed:
        logger.warning(
            "stage %d: %d of %d held-out answers failed (first: %s); they count as not ok "
            "and are retried on the next run",
            stage,
            len(failed),
            len(records),
            failed[0].reason,
        )
    accuracy: PairAccuracy | None = None
    if test_pairs is not None and stage > 0:
        accuracy = await _pair_accuracy(
            gen,
            tokenizer,
            test_pairs,
            stage_dir,
            model=model,
            reference_model=reference_model or base_model,
            settings=settings,
        )
    summary = summarize_stage(
        records,
        base=base,
        previous=previous,
        previous_stage=previous_stage,
        pair_accuracy=accuracy,
    )
    write_atomic(summary_path, summary.model_dump_json(indent=2) + "\n")
    return summary


async def _pair_accuracy(
    gen: GeneratorClient,
    tokenizer: Tokenizer | None,
    test_pairs: Path,
    stage_dir: Path,
    *,
    model: str,
    reference_model: str,
    settings: EvalSettings,
) -> PairAccuracy | None:
    pairs = _read_pairs(test_pairs)
    if not pairs:
        return None
    eos = settings.eos_token
    if eos == "auto":
        eos = await resolve_eos_token(gen, reference_model)
    accuracy, scores = await pair_accuracy(
        gen,
        tokenizer or VllmTokenizer(gen),
        pairs,
        model=model,
        reference_model=reference_model,
        beta=settings.beta,
        eos_token=eos,
        pairs_file=str(test_pairs),
    )
    write_atomic(stage_dir / PAIR_SCORES_FILE, "".join(s.model_dump_json() + "\n" for s in scores))
    return accuracy


__all__ = [
    "REFERENCE_RULE",
    "EvalSettings",
    "EvaluationError",
    "evaluate_stage",
    "mentions_reference",
]
