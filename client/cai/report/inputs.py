"""Everything the report reads from a run folder, in one place: `load_run(run_dir) -> RunInputs`.

The run folder (`runs/<name>/`) and the files read, every one optional (a part that is missing
is shown as missing, never an error; a run with only a baseline makes a report too):

    manifest.json                 run-level manifest (`cai run`): read loosely for the run name,
                                  `base_model`, the config and `stages[]` entries with `stage`
                                  and `model`; unknown keys are ignored.
    state.json                    `cai run`'s resume state: `stages[].number/served_name` name
                                  the stage models when the manifest does not
    eval.jsonl                    EvalRecord lines (cai.evaluation.records); stage 0 = base.
    judge_check.json              JudgeCheck (cai.evaluation.judge_check): the judge measured
                                  on hand-checkable cases; every judge figure is read with it
    steps.jsonl                   cost and time, one line per finished step of `cai run`:
                                  {"stage": 1, "step": "train", "wall_s": 812.4,
                                   "gpu_s": 812.4, "prompt_tokens": 0, "completion_tokens": 0,
                                   "cost_usd": 0.56}   (all but stage/step/wall_s optional)
    stages/<N>/                   stage N (N >= 1); stage 0 holds only the baseline's files:
        eval_summary.json         EvalSummary (else rebuilt from eval.jsonl, without pair accuracy)
        pair_scores.jsonl         PairScore lines: the distribution of implicit rewards
        train_events.jsonl        training curve, one line per logged step, JobProgress-like:
                                  {"step": 3, "total_steps": 10, "epoch": 0.3,
                                   "metrics": {"loss": 0.69, "rewards/margins": 0.01,
                                               "rewards/accuracies": 0.5, ...}}
                                  (a whole JobEvent line {"type": "progress", "progress": {...}}
                                  is accepted too; lines without metrics are skipped)
        manifest.json             the pipeline's manifest of the stage (cai.pipeline.manifest):
                                  its `tokens` per step ({requests, prompt_tokens,
                                  completion_tokens}), `wall_s`, `gpu_s`, `cost_usd`
        <step>.jsonl              the pipeline's step files for the stage (instructions,
                                  responses, critiques, revisions, judgements, pairs, train,
                                  test): records with `status` and `reason` make the funnel and
                                  the skip reasons.

Torn last lines (a process killed mid-append) are ignored; a malformed line elsewhere is
logged and skipped, so a report can always be built from whatever is there.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from cai.evaluation.pair_accuracy import PairScore
from cai.evaluation.records import (
    EvalRecord,
    EvalSummary,
    JudgeCheck,
    records_by_stage,
    summarize_stage,
)
from cai.pipeline.records import STEPS
from cai.runfolder import (
    EVAL_FILE,
    EVAL_SUMMARY_FILE,
    JUDGE_CHECK_FILE,
    MANIFEST_FILE,
    PAIR_SCORES_FILE,
    SPLIT_FILES,
    STAGES_DIR,
    STATE_FILE,
    STEPS_FILE,
    TRAIN_EVENTS_FILE,
    read_json,
    read_jsonl,
    stage_folder,
    step_path,
)

logger = logging.getLogger(__name__)

# The pipeline's step files in funnel order.
FUNNEL_STEPS: tuple[str, ...] = (*STEPS, *SPLIT_FILES)


class TrainPoint(BaseModel):
    step: int
    total_steps: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class FunnelStep(BaseModel):
    step: str
    ok: int = Field(description="Records with status ok (all lines for train/test).")
    total: int = Field(description="All records written by the step.")
    not_ok: dict[str, int] = Field(
        default_factory=dict, description="`<status>: <reason>` -> count, for records not ok."
    )


class StepTokens(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class PipelineCost(BaseModel):
    """What the stage's generation cost, from the pipeline's own manifest."""

    tokens: dict[str, StepTokens] = Field(default_factory=dict)
    wall_s: float | None = None
    gpu_s: float | None = None
    cost_usd: float | None = None


class StepTiming(BaseModel):
    stage: int
    step: str
    wall_s: float
    gpu_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None


class StageInputs(BaseModel):
    stage: int
    model: str | None = None
    summary: EvalSummary | None = None
    summary_rebuilt: bool = Field(
        default=False, description="Rebuilt from eval.jsonl: no eval_summary.json was found."
    )
    records: list[EvalRecord] = Field(default_factory=list)
    pair_scores: list[PairScore] = Field(default_factory=list)
    train: list[TrainPoint] = Field(default_factory=list)
    funnel: list[FunnelStep] = Field(default_factory=list)
    pipeline: PipelineCost | None = None


class RunInputs(BaseModel):
    run_dir: str
    name: str
    base_model: str | None = None
    heldout_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageInputs] = Field(description="Stage 0 (baseline) first, when present.")
    timings: list[StepTiming] = Field(default_factory=list)
    judge_check: JudgeCheck | None = Field(
        default=None, description="None: the run has no judge check (older run, or no judge)."
    )
    missing: list[str] = Field(default_factory=list, description="Files the report looked for.")

    def stage(self, number: int) -> StageInputs | None:
        return next((s for s in self.stages if s.stage == number), None)

    @property
    def baseline(self) -> StageInputs | None:
        return self.stage(0)

    @property
    def trained(self) -> list[StageInputs]:
        return [s for s in self.stages if s.stage > 0]


def _models(rows: list[dict[str, Any]], model: type[BaseModel], path: Path) -> list[Any]:
    out = []
    for number, row in enumerate(rows, start=1):
        try:
            out.append(model.model_validate(row))
        except ValidationError as exc:
            logger.warning("%s row %d is not a %s: %s", path, number, model.__name__, exc)
    return out


def read_train_events(path: Path) -> list[TrainPoint]:
    points: list[TrainPoint] = []
    for row in read_jsonl(path):
        data = row.get("progress") if isinstance(row.get("progress"), dict) else row
        if not isinstance(data, dict) or "step" not in data:
            continue
        metrics = data.get("metrics") or {}
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if not clean:
            continue
        try:
            points.append(
                TrainPoint(
                    step=int(data["step"]),
                    total_steps=data.get("total_steps"),
                    epoch=data.get("epoch"),
                    metrics=clean,
                )
            )
        except (TypeError, ValueError, ValidationError):
            logger.warning("%s: unreadable training event %r", path, row)
    # One point per step (the event stream may repeat a step); the last one wins.
    by_step = {p.step: p for p in points}
    return [by_step[s] for s in sorted(by_step)]


def read_funnel(stage_dir: Path) -> list[FunnelStep]:
    funnel = []
    for step in FUNNEL_STEPS:
        path = step_path(stage_dir, step)
        if not path.exists():
            continue
        rows = read_jsonl(path)
        not_ok: Counter[str] = Counter()
        ok = 0
        for row in rows:
            status = row.get("status", "ok")
            if status == "ok":
                ok += 1
            else:
                not_ok[f"{status}: {row.get('reason') or 'no reason given'}"] += 1
        funnel.append(
            FunnelStep(step=step, ok=ok, total=len(rows), not_ok=dict(not_ok.most_common()))
        )
    return funnel


def read_pipeline_cost(stage_dir: Path) -> PipelineCost | None:
    data = read_json(stage_dir / MANIFEST_FILE)
    if not data:
        return None
    try:
        return PipelineCost.model_validate(
            {key: data[key] for key in ("tokens", "wall_s", "gpu_s", "cost_usd") if key in data}
        )
    except ValidationError as exc:
        logger.warning("%s: unreadable costs (%s)", stage_dir / MANIFEST_FILE, exc)
        return None


def read_judge_check(path: Path) -> JudgeCheck | None:
    data = read_json(path)
    if not data:
        return None
    try:
        return JudgeCheck.model_validate(data)
    except ValidationError as exc:
        logger.warning("%s is not a judge check (%s); ignored", path, exc)
        return None


def _stage_numbers(run_dir: Path, records: dict[int, list[EvalRecord]]) -> list[int]:
    numbers = set(records)
    stages_dir = run_dir / STAGES_DIR
    if stages_dir.is_dir():
        numbers |= {int(p.name) for p in stages_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    return sorted(numbers)


def load_run(run_dir: Path) -> RunInputs:
    """Read every report input present under `run_dir` (see the module docstring)."""
    run_dir = Path(run_dir)
    missing: list[str] = []
    manifest = read_json(run_dir / MANIFEST_FILE)
    if not manifest:
        missing.append(MANIFEST_FILE)
    eval_rows = read_jsonl(run_dir / EVAL_FILE)
    if not eval_rows:
        missing.append(EVAL_FILE)
    grouped = records_by_stage(_models(eval_rows, EvalRecord, run_dir / EVAL_FILE))
    state = read_json(run_dir / STATE_FILE)
    manifest_models = {
        int(entry["number"]): str(entry["served_name"])
        for entry in state.get("stages", [])
        if isinstance(entry, dict) and "number" in entry and entry.get("served_name")
    }
    manifest_models.update(
        {
            int(entry["stage"]): str(entry["model"])
            for entry in manifest.get("stages", [])
            if isinstance(entry, dict) and "stage" in entry and entry.get("model")
        }
    )

    stages: list[StageInputs] = []
    previous: int | None = None
    for number in _stage_numbers(run_dir, grouped):
        stage_dir = stage_folder(run_dir, number)
        records = grouped.get(number, [])
        summary_data = read_json(stage_dir / EVAL_SUMMARY_FILE)
        summary: EvalSummary | None = None
        rebuilt = False
        if summary_data:
            try:
                summary = EvalSummary.model_validate(summary_data)
            except ValidationError as exc:
                logger.warning("%s invalid (%s); rebuilt", stage_dir / EVAL_SUMMARY_FILE, exc)
        if summary is None and records:
            summary = summarize_stage(
                records,
                base=grouped.get(0),
                previous=grouped.get(previous) if previous is not None else None,
                previous_stage=previous,
            )
            rebuilt = True
        if summary is None and records == []:
            missing.append(f"{STAGES_DIR}/{number}/{EVAL_SUMMARY_FILE}")
        train = read_train_events(stage_dir / TRAIN_EVENTS_FILE)
        if number > 0 and not train:
            missing.append(f"{STAGES_DIR}/{number}/{TRAIN_EVENTS_FILE}")
        model = manifest_models.get(number) or (summary.model if summary else None)
        stages.append(
            StageInputs(
                stage=number,
                model=model,
                summary=summary,
                summary_rebuilt=rebuilt,
                records=records,
                pair_scores=_models(read_jsonl(stage_dir / PAIR_SCORES_FILE), PairScore, stage_dir),
                train=train,
                funnel=read_funnel(stage_dir) if number > 0 else [],
                pipeline=read_pipeline_cost(stage_dir) if number > 0 else None,
            )
        )
        if records:
            previous = number

    timings = _models(read_jsonl(run_dir / STEPS_FILE), StepTiming, run_dir / STEPS_FILE)
    if not timings:
        missing.append(STEPS_FILE)
    judge_check = read_judge_check(run_dir / JUDGE_CHECK_FILE)
    if judge_check is None and any(r.judge_ok is not None for rs in grouped.values() for r in rs):
        missing.append(JUDGE_CHECK_FILE)  # judge figures without a measure of the judge
    base_model = manifest.get("base_model")
    if base_model is None and 0 in grouped:
        base_model = grouped[0][0].model
    versions = {r.heldout_version for rs in grouped.values() for r in rs}
    config = manifest.get("config")
    return RunInputs(
        run_dir=str(run_dir),
        name=str(manifest.get("name") or run_dir.name),
        base_model=str(base_model) if base_model is not None else None,
        heldout_version=", ".join(sorted(versions)) or None,
        config=config if isinstance(config, dict) else {},
        stages=stages,
        timings=timings,
        judge_check=judge_check,
        missing=missing,
    )


__all__ = [
    "FUNNEL_STEPS",
    "FunnelStep",
    "PipelineCost",
    "RunInputs",
    "StageInputs",
    "StepTiming",
    "TrainPoint",
    "load_run",
    "read_funnel",
    "read_judge_check",
    "read_train_events",
]
