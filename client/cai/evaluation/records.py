"""What the evaluation writes: one `EvalRecord` per held-out instruction per stage, and a summary.

Files in the run folder (`runs/<name>/`):

    eval.jsonl                     EvalRecord lines; stage 0 is the base model (the baseline)
    stages/<N>/eval_summary.json   EvalSummary of stage N (stage 0 = baseline)
    stages/<N>/pair_scores.jsonl   PairScore lines (held-out pair accuracy, per pair)
    judge_check.json               JudgeCheck: the judge measured on hand-checkable cases
                                   (cai.evaluation.judge_check), once per run

`summarize_stage` is a pure function of the records, so the report can rebuild a summary from
`eval.jsonl` alone when a summary file is missing (pair accuracy then comes only from the file).
Rule and judge verdicts stay separate everywhere: a judge that drifts must not hide behind
rules that pass, and a rule that measures length must not hide behind the judge
(notes/prior-art.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.evaluation.judge_cases import AnswerKind
from cai.evaluation.pair_accuracy import PairAccuracy
from cai.evaluation.stats import (
    Interval,
    LengthStats,
    McNemarResult,
    length_stats,
    mcnemar_exact,
    wilson_interval,
)
from cai.pipeline.heldout import INSTRUCTION_TYPES, InstructionType
from cai.pipeline.records import JudgeQuery, Record

ALL = "all"
EXAMPLES = 12
EXAMPLE_CHARS = 400


class EvalRecordError(ValueError):
    """An eval file cannot be read; the message names the file and line."""


def eval_record_id(stage: int, instruction_id: str) -> str:
    return f"s{stage}.{instruction_id}"


class EvalRecord(Record):
    """One held-out instruction answered by one stage's model, with both verdicts.

    A pipeline `Record` (id, instruction_id, status, reason), so the pipeline's append-only
    `StepFile` stores it: one write per line, a torn tail cut on open. `id` is
    `s<stage>.<instruction id>`.
    """

    model_config = ConfigDict(extra="forbid")

    heldout_version: str
    type: InstructionType
    instruction: str
    stage: int = Field(ge=0, description="0 = the base model (baseline).")
    model: str = Field(description="Served model name: the base or `stage<N>-<job id>`.")
    template: str | None = Field(default=None, description="Response template `name@version`.")
    temperature: float
    max_tokens: int
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    response: str = ""
    finish_reason: str | None = None
    response_tokens: int | None = Field(default=None, description="From the server's usage.")
    rules: dict[str, bool] = Field(default_factory=dict, description="Each rule check: passed?")
    rule_ok: bool = False
    judge_ok: bool | None = Field(default=None, description="None when no judge ran.")
    judge_margin: float | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.stage, self.instruction_id)


class Comparison(BaseModel):
    """Paired tests of this stage against another (same instructions, McNemar exact)."""

    against_stage: int
    rules: McNemarResult
    judge: McNemarResult | None = None


class Example(BaseModel):
    """One answer kept in the summary, so the manifest shows what the numbers are made of."""

    instruction_id: str
    type: InstructionType
    instruction: str
    response: str = Field(description=f"The answer, cut at {EXAMPLE_CHARS} characters.")
    rule_ok: bool
    judge_ok: bool | None
    base_rule_ok: bool | None = None
    base_judge_ok: bool | None = None


class EvalSummary(BaseModel):
    """Everything `cai run` stores in the manifest for one stage, and what the report plots."""

    stage: int
    model: str
    heldout_version: str
    n: int = Field(description="Held-out instructions evaluated.")
    failed: int = Field(default=0, description="Generations that failed (count as not ok).")
    rules: dict[str, Interval] = Field(description="Per type and `all`: rule success.")
    judge: dict[str, Interval] = Field(
        default_factory=dict, description="Per type and `all`: judge success (empty: no judge)."
    )
    vs_base: Comparison | None = None
    vs_previous: Comparison | None = None
    pair_accuracy: PairAccuracy | None = None
    length_chars: LengthStats
    length_tokens: LengthStats
    mean_judge_margin: float | None = None
    truncated: int = Field(default=0, description="Responses cut by max_tokens.")
    examples: list[Example] = Field(
        default_factory=list, description="Verdict changes against the base first, all types."
    )


class JudgedAnswer(BaseModel):
    """One answer of a judge case (the good one or a corrupted copy) and what the judge said."""

    kind: AnswerKind
    text: str
    margin: float = Field(description="Mean over queries of log P(good) - log P(bad), nats.")
    judge_ok: bool = Field(description="margin > the pipeline's judge threshold.")
    queries: list[JudgeQuery] = Field(description="A-first, then B-first with `swap`.")


class JudgeCaseResult(BaseModel):
    case_id: str
    type: InstructionType
    instruction: str
    answers: list[JudgedAnswer] = Field(description="`good` first, then one per corruption.")

    def answer(self, kind: AnswerKind) -> JudgedAnswer:
        return next(a for a in self.answers if a.kind == kind)


class Agreement(BaseModel):
    """(good, corrupted) pairs where the good answer's margin is the higher one.

    A tie counts half (rounded down over the set, so ties never add credit): a judge that
    gives every answer the same margin scores 0.5, chance, which is what it knows.
    """

    pairs: int
    wins: int = Field(description="Good margin > corrupted margin.")
    ties: int
    losses: int
    interval: Interval = Field(description="Wilson interval of wins + ties // 2 over pairs.")


class PositionBias(BaseModel):
    """How much the verdict depends on which letter holds the good option."""

    answers: int = Field(description="Answers asked in both orders (0 without `swap`).")
    order_disagrees: Interval | None = Field(
        default=None,
        description="Share of answers where the A-first and the B-first query disagree on the "
        "verdict (sign of log P(good) - log P(bad)); None without `swap`.",
    )
    prefers_a_nats: float = Field(
        description="Mean over every query of log P(A) - log P(B): > 0 leans to letter A."
    )


class JudgeCheck(BaseModel):
    """`judge_check.json`: the pipeline's judge on hand-checkable cases (`cai run` writes it once).

    Reused while `judge_model`, `cases_version`, `template`/`template_sha256` and the judge
    settings are the same; every case's margins are kept for inspection.
    """

    judge_model: str
    cases_version: str
    template: str = Field(description="Judge template `name@version`.")
    template_sha256: str
    method: str
    swap: bool
    top_logprobs: int
    threshold: float
    cases: int = Field(description="Cases asked about (each a good answer and its copies).")
    agreement: Agreement = Field(description="All corruption kinds together.")
    agreement_by_kind: dict[str, Agreement]
    accuracy: Interval = Field(
        description="Pairs where the good answer is judged ok and the corrupted one not ok."
    )
    accuracy_by_kind: dict[str, Interval]
    good_ok: Interval = Field(description="Good answers judged ok.")
    corrupted_not_ok: Interval = Field(description="Corrupted answers judged not ok.")
    position_bias: PositionBias
    labels_read: Interval | None = Field(
        default=None,
        description="Share of queries whose next-token top-k held both labels (the judge's "
        "parse rate: the rest were floored or scored). None: not recorded (older checks).",
    )
    trustworthy: bool = Field(description="Wilson lower bound of the agreement > 0.5.")
    verdict: str = Field(description="One line a person reads first.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: str
    results: list[JudgeCaseResult] = Field(default_factory=list)

    def brief(self) -> dict[str, object]:
        """The figures without the per-case results: what the run manifest carries."""
        return self.model_dump(mode="json", exclude={"results"})


def _rate_table(
    records: Sequence[EvalRecord], verdict: str, confidence: float
) -> dict[str, Interval]:
    table: dict[str, Interval] = {}
    for kind in (*INSTRUCTION_TYPES, ALL):
        chosen = [r for r in records if kind in (ALL, r.type)]
        if not chosen:
            continue
        values = [getattr(r, verdict) for r in chosen]
        table[kind] = wilson_interval(sum(1 for v in values if v), len(values), confidence)
    return table


def _compare(
    records: Sequence[EvalRecord], other: Sequence[EvalRecord], against: int
) -> Comparison | None:
    """McNemar on the instructions both sides answered; None when they share none."""
    mine = {r.instruction_id: r for r in records}
    theirs = {r.instruction_id: r for r in other}
    shared = sorted(mine.keys() & theirs.keys())
    if not shared:
        return None
    rules = mcnemar_exact([theirs[i].rule_ok for i in shared], [mine[i].rule_ok for i in shared])
    judged = [i for i in shared if mine[i].judge_ok is not None and theirs[i].judge_ok is not None]
    judge = (
        mcnemar_exact(
            [bool(theirs[i].judge_ok) for i in judged], [bool(mine[i].judge_ok) for i in judged]
        )
        if judged
        else None
    )
    return Comparison(against_stage=against, rules=rules, judge=judge)


def pick_examples(
    base: Sequence[EvalRecord], stage: Sequence[EvalRecord], count: int = EXAMPLES
) -> list[tuple[EvalRecord | None, EvalRecord]]:
    """Up to `count` (base, stage) pairs: verdict changes first, then round-robin over types."""
    base_by_id = {r.instruction_id: r for r in base}

    def changed(record: EvalRecord) -> bool:
        other = base_by_id.get(record.instruction_id)
        return other is not None and (
            other.rule_ok != record.rule_ok or other.judge_ok != record.judge_ok
        )

    ordered = sorted(stage, key=lambda r: r.instruction_id)
    picked: list[EvalRecord] = []
    for group in ([r for r in ordered if changed(r)], [r for r in ordered if not changed(r)]):
        by_type: dict[str, list[EvalRecord]] = {}
        for r in group:
            by_type.setdefault(r.type, []).append(r)
        # Round-robin over the types, so a short table still shows every kind of task.
        while any(by_type.values()):
            for kind in INSTRUCTION_TYPES:
                if by_type.get(kind):
                    picked.append(by_type[kind].pop(0))
    return [(base_by_id.get(r.instruction_id), r) for r in picked[:count]]


def summarize_stage(
    records: Sequence[EvalRecord],
    *,
    base: Sequence[EvalRecord] | None = None,
    previous: Sequence[EvalRecord] | None = None,
    previous_stage: int | None = None,
    pair_accuracy: PairAccuracy | None = None,
    confidence: float = 0.95,
    examples: int = EXAMPLES,
) -> EvalSummary:
    """Rates with Wilson intervals (rules and judge apart), McNemar tests, lengths."""
    if not records:
        raise ValueError("no eval records to summarise")
    stages = {r.stage for r in records}
    if len(stages) != 1:
        raise ValueError(f"records of several stages {sorted(stages)}: summarise one at a time")
    stage = records[0].stage
    judged = [r for r in records if r.judge_ok is not None]
    answered = [r for r in records if r.status == "ok"]
    margins = [r.judge_margin for r in records if r.judge_margin is not None]
    vs_previous = None
    if previous is not None and previous_stage is not None and previous_stage != 0:
        vs_previous = _compare(records, previous, previous_stage)
    return EvalSummary(
        stage=stage,
        model=records[0].model,
        heldout_version=records[0].heldout_version,
        n=len(records),
        failed=sum(1 for r in records if r.status == "failed"),
        rules=_rate_table(records, "rule_ok", confidence),
        judge=_rate_table(judged, "judge_ok", confidence) if judged else {},
        vs_base=_compare(records, base, 0) if base is not None and stage != 0 else None,
        vs_previous=vs_previous,
        pair_accuracy=pair_accuracy,
        length_chars=length_stats([len(r.response) for r in answered]),
        length_tokens=length_stats(
            [r.response_tokens for r in answered if r.response_tokens is not None]
        ),
        mean_judge_margin=sum(margins) / len(margins) if margins else None,
        truncated=sum(1 for r in answered if r.finish_reason == "length"),
        examples=[
            Example(
                instruction_id=after.instruction_id,
                type=after.type,
                instruction=after.instruction,
                response=after.response[:EXAMPLE_CHARS],
                rule_ok=after.rule_ok,
                judge_ok=after.judge_ok,
                base_rule_ok=before.rule_ok if before is not None else None,
                base_judge_ok=before.judge_ok if before is not None else None,
            )
            for before, after in pick_examples(base or [], records, examples)
        ],
    )


def read_eval_records(path: Path) -> list[EvalRecord]:
    """The records of an eval.jsonl (missing file: none), read only: a torn last line is
    ignored, and of records with the same id the last one wins (a retried failure)."""
    if not path.exists():
        return []
    records: list[EvalRecord] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(EvalRecord.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            if number == len(lines):
                # No newline after it: a process killed mid-append left a partial line;
                # that instruction is evaluated again on resume.
                continue
            raise EvalRecordError(f"{path}:{number} is not an eval record: {exc}") from exc
    latest = {record.id: record for record in records}
    return list(latest.values())


def records_by_stage(records: Iterable[EvalRecord]) -> dict[int, list[EvalRecord]]:
    grouped: dict[int, list[EvalRecord]] = {}
    for record in records:
        grouped.setdefault(record.stage, []).append(record)
    return dict(sorted(grouped.items()))


__all__ = [
    "ALL",
    "EXAMPLES",
    "Agreement",
    "Comparison",
    "EvalRecord",
    "EvalRecordError",
    "EvalSummary",
    "Example",
    "JudgeCaseResult",
    "JudgeCheck",
    "JudgedAnswer",
    "PositionBias",
    "eval_record_id",
    "pick_examples",
    "read_eval_records",
    "records_by_stage",
    "summarize_stage",
]
