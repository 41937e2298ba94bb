"""A judge you can trust, or know not to: the pipeline's judge measured on hand-checkable cases.

    async with GeneratorClient(url) as gen:
        check = await check_judge(gen.complete, model="tiny", pipeline=config, run_dir=run_dir)
    check.trustworthy, check.verdict          # also in run_dir/judge_check.json

The model judge's verdicts decide which pairs are built and what the evaluation reports as
judge success; a small base model as judge may give noise. So before the baseline `cai run`
asks the judge, exactly as the pipeline asks it (its template, `build_queries`, `ask`, method,
top-k, swap and threshold), about every good answer of `judge_cases_v1.yaml` and about its
corrupted copies (`judge_cases.corrupt`), and measures:

- pairwise agreement: the share of (good, corrupted) pairs where the good answer's margin is
  the higher one, overall and per corruption kind, with a 95% Wilson interval. A tie counts
  half (rounded down over the set): a judge that gives every answer the same margin, as one
  that always answers "A" does under `swap`, scores 0.5, chance, which is what it knows;
- absolute accuracy: pairs where the good answer is judged ok (margin > threshold) and the
  corrupted one not ok; and each side alone;
- position bias: the share of answers whose A-first and B-first queries disagree on the
  verdict (sign of log P(good) - log P(bad)), and the mean log P(A) - log P(B) over queries;
- `trustworthy`: the agreement's Wilson lower bound is above 0.5, better than chance.

`judge_check.json` (written atomically) keeps every case's margins, and is reused while the
judge model, the cases version, the judge template (tag and text) and the judge settings are
the same, so a resumed run does not ask again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cai.evaluation.judge_cases import CORRUPTIONS, AnswerKind, JudgeCase, corrupt, load_judge_cases
from cai.evaluation.records import (
    Agreement,
    JudgeCaseResult,
    JudgeCheck,
    JudgedAnswer,
    PositionBias,
)
from cai.evaluation.settings import EvaluationError
from cai.evaluation.stats import Interval, wilson_interval
from cai.pipeline import judgements
from cai.pipeline.config import PipelineConfig
from cai.pipeline.prompts import Template, load_template
from cai.pipeline.records import JudgeQuery, derive_seed
from cai.runfolder import JUDGE_CHECK_FILE, write_atomic

logger = logging.getLogger(__name__)

# A few hundred one-token requests (~30 cases x 5 answers x 2 queries): enough in flight to
# keep vLLM's batch busy without crowding out anything else on the server.
CONCURRENCY = 16
NOT_EVIDENCE = "judge figures are not evidence"


def judge_template(pipeline: PipelineConfig) -> Template:
    """The judge template the pipeline uses (its `templates_dir`, else the packaged one)."""
    return load_template("judge", Path(pipeline.templates_dir) if pipeline.templates_dir else None)


def _identity(
    model: str, cases_version: str, template: Template, pipeline: PipelineConfig
) -> dict[str, Any]:
    """What decides the answers: a judge_check.json with other values must be asked again."""
    judge = pipeline.judge
    return {
        "judge_model": model,
        "cases_version": cases_version,
        "template": template.tag,
        "template_sha256": template.sha256,
        "method": judge.method,
        "swap": judge.swap,
        "top_logprobs": judge.top_logprobs,
        "threshold": judge.threshold,
    }


def reusable_check(
    run_dir: Path, *, model: str, pipeline: PipelineConfig, cases_file: Path | str | None = None
) -> JudgeCheck | None:
    """`run_dir/judge_check.json` when it measured this judge on these cases, else None."""
    path = Path(run_dir) / JUDGE_CHECK_FILE
    if not path.exists():
        return None
    try:
        check = JudgeCheck.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        logger.warning("%s unreadable (%s): the judge is asked again", path, exc)
        return None
    wanted = _identity(
        model, load_judge_cases(cases_file).version, judge_template(pipeline), pipeline
    )
    found = check.model_dump(include=set(wanted))
    if found != wanted:
        changed = sorted(k for k in wanted if found.get(k) != wanted[k])
        logger.info("%s is for another judge (%s differ): asked again", path, ", ".join(changed))
        return None
    return check


def _says_good(query: JudgeQuery) -> bool:
    diff = query.logprob_a - query.logprob_b
    return (diff if query.good_label == "A" else -diff) > 0


def _rate(flags: list[bool]) -> Interval:
    return wilson_interval(sum(flags), len(flags))


def _agreement(pairs: list[tuple[float, float]]) -> Agreement:
    wins = sum(1 for good, bad in pairs if good > bad)
    ties = sum(1 for good, bad in pairs if good == bad)
    return Agreement(
        pairs=len(pairs),
        wins=wins,
        ties=ties,
        losses=len(pairs) - wins - ties,
        interval=wilson_interval(wins + ties // 2, len(pairs)),
    )


def _position_bias(answers: list[JudgedAnswer]) -> PositionBias:
    disagree = []
    for answer in answers:
        first = [q for q in answer.queries if q.good_label == "A"]
        second = [q for q in answer.queries if q.good_label == "B"]
        if first and second:
            disagree.append(_says_good(first[0]) != _says_good(second[0]))
    diffs = [q.logprob_a - q.logprob_b for a in answers for q in a.queries]
    return PositionBias(
        answers=len(disagree),
        order_disagrees=_rate(disagree) if disagree else None,
        prefers_a_nats=round(sum(diffs) / len(diffs), 6) if diffs else 0.0,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def verdict(agreement: Agreement, bias: PositionBias) -> str:
    """One line: whether the judge's figures say anything, and the number that decides it."""
    ci = agreement.interval
    figure = (
        f"agreement {_pct(ci.rate)} [{_pct(ci.low)}, {_pct(ci.high)}] on {agreement.pairs} "
        "good/corrupted pairs"
    )
    if ci.low > 0.5:
        text = f"the judge tells good answers from corrupted ones ({figure})"
    elif ci.high < 0.5:
        text = f"the judge prefers the corrupted answers ({figure}): {NOT_EVIDENCE}"
    else:
        text = (
            f"the judge is no better than chance on hand-checkable cases ({figure}): {NOT_EVIDENCE}"
        )
    orders = bias.order_disagrees
    if orders is not None and orders.rate is not None and orders.rate > 0.5:
        text += (
            f"; its verdict follows the letter, not the answer (the two orders disagree on "
            f"{_pct(orders.rate)} of answers)"
        )
    return text


def summarize_check(
    results: list[JudgeCaseResult],
    *,
    model: str,
    cases_version: str,
    template: Template,
    pipeline: PipelineConfig,
) -> JudgeCheck:
    """Every figure of the check from the judged answers (pure: the report could redo it)."""
    pairs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in CORRUPTIONS}
    correct: dict[str, list[bool]] = {kind: [] for kind in CORRUPTIONS}
    for result in results:
        good = result.answer("good")
        for kind in CORRUPTIONS:
            bad = result.answer(kind)
            pairs[kind].append((good.margin, bad.margin))
            correct[kind].append(good.judge_ok and not bad.judge_ok)
    answers = [a for r in results for a in r.answers]
    agreement = _agreement([p for kind in CORRUPTIONS for p in pairs[kind]])
    bias = _position_bias(answers)
    queries = [q for a in answers for q in a.queries]
    read = [q.labels_in_top_k == 2 for q in queries if q.labels_in_top_k is not None]
    return JudgeCheck(
        **_identity(model, cases_version, template, pipeline),
        cases=len(results),
        agreement=agreement,
        agreement_by_kind={kind: _agreement(pairs[kind]) for kind in CORRUPTIONS},
        accuracy=_rate([c for kind in CORRUPTIONS for c in correct[kind]]),
        accuracy_by_kind={kind: _rate(correct[kind]) for kind in CORRUPTIONS},
        good_ok=_rate([a.judge_ok for a in answers if a.kind == "good"]),
        corrupted_not_ok=_rate([not a.judge_ok for a in answers if a.kind != "good"]),
        position_bias=bias,
        labels_read=_rate(read) if read else None,
        trustworthy=agreement.interval.low > 0.5,
        verdict=verdict(agreement, bias),
        prompt_tokens=sum(q.usage.prompt_tokens for q in queries),
        completion_tokens=sum(q.usage.completion_tokens for q in queries),
        created_at=datetime.now(UTC).isoformat(),
        results=results,
    )


async def check_judge(
    complete: judgements.Complete,
    *,
    model: str,
    pipeline: PipelineConfig,
    run_dir: Path,
    cases_file: Path | str | None = None,
    concurrency: int = CONCURRENCY,
) -> JudgeCheck:
    """Measure the judge `model` (served behind `complete`, GeneratorClient.complete-shaped)
    on the judge cases (`cases_file`; None: the packaged v1), write and return the check.

    A `run_dir/judge_check.json` of the same judge and cases is returned without asking.
    """
    cached = reusable_check(run_dir, model=model, pipeline=pipeline, cases_file=cases_file)
    if cached is not None:
        logger.info("judge check reused: %s", cached.verdict)
        return cached
    cases = load_judge_cases(cases_file)
    template = judge_template(pipeline)
    labels = judgements.labels(template)
    judge = pipeline.judge
    limit = asyncio.Semaphore(concurrency)

    async def ask(
        case: JudgeCase, kind: AnswerKind, index: int, query: judgements.JudgePrompt
    ) -> JudgeQuery:
        async with limit:
            try:
                return await judgements.ask(
                    complete,
                    query,
                    model=model,
                    labels=labels,
                    method=judge.method,
                    top_logprobs=judge.top_logprobs,
                    seed=derive_seed(pipeline.seed, "judge-check", case.id, kind, index),
                )
            except judgements.JudgeAnswerError as exc:
                raise EvaluationError(f"judge check: {exc}") from exc

    async def answer(case: JudgeCase, kind: AnswerKind, text: str) -> JudgedAnswer:
        prompts = judgements.build_queries(template, case.instruction, text, swap=judge.swap)
        queries = list(
            await asyncio.gather(*(ask(case, kind, i, q) for i, q in enumerate(prompts)))
        )
        margin = judgements.margin(queries)
        return JudgedAnswer(
            kind=kind,
            text=text,
            margin=round(margin, 6),
            judge_ok=margin > judge.threshold,
            queries=queries,
        )

    async def one(case: JudgeCase, texts: dict[AnswerKind, str]) -> JudgeCaseResult:
        judged = await asyncio.gather(*(answer(case, kind, text) for kind, text in texts.items()))
        return JudgeCaseResult(
            case_id=case.id, type=case.type, instruction=case.instruction, answers=list(judged)
        )

    results = list(await asyncio.gather(*(one(case, texts) for case, texts in corrupt(cases))))
    check = summarize_check(
        results, model=model, cases_version=cases.version, template=template, pipeline=pipeline
    )
    # Atomic: a run killed mid-write leaves no half file that looks reusable.
    write_atomic(Path(run_dir) / JUDGE_CHECK_FILE, check.model_dump_json(indent=2) + "\n")
    logger.info("judge check: %s", check.verdict)
    return check


__all__ = [
    "NOT_EVIDENCE",
    "check_judge",
    "judge_template",
    "load_judge_cases",
    "reusable_check",
    "summarize_check",
    "verdict",
]
