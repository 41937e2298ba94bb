"""Evaluate one served model (the base or a stage's adapter) on the held-out set.

    async with GeneratorClient(url) as gen:
        baseline = await evaluate_stage(gen, run_dir, stage=0, model="tiny", base_model="tiny",
                                        pipeline=config)
        stage1 = await evaluate_stage(gen, run_dir, stage=1, model="stage1-job-ab12",
                                      base_model="tiny", pipeline=config,
                                      test_pairs=run_dir / "stages/1/test.jsonl")

Each held-out instruction is answered and scored by `cai.evaluation.answers` (the
pipeline's response prompt, its rule checks plus a reference-fact check, and the model
judge; the two verdicts kept apart). This module runs them for a stage and sums them up.

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
from pathlib import Path

from cai.evaluation.answers import AnswerEvaluator
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
from cai.evaluation.settings import EvalSettings, EvaluationError
from cai.generator import GeneratorClient
from cai.pipeline.config import PipelineConfig
from cai.pipeline.heldout import HeldoutInstruction, HeldoutSet, load_heldout
from cai.pipeline.store import StepFile
from cai.runfolder import EVAL_FILE, EVAL_SUMMARY_FILE, PAIR_SCORES_FILE, stage_folder, write_atomic
from protocol.datasets import PreferencePair

logger = logging.getLogger(__name__)


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
        evaluator = AnswerEvaluator(
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


# EvalSettings and EvaluationError live in cai.evaluation.settings; `cai run` imports the
# error from here, where evaluate_stage raises it.
__all__ = ["EvalSettings", "EvaluationError", "evaluate_stage"]
