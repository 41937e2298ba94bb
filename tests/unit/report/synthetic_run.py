"""A synthetic run folder with every report input, for the report tests (no model involved).

`make_run(path, stages=2)` writes what `cai run` leaves behind after a baseline and `stages`
trained stages: manifest.json, judge_check.json, eval.jsonl, steps.jsonl and stages/<N>/ with
the summary, pair scores, training events and pipeline step files. `judge="chance"` writes a
judge check of a judge that leans on letter A and cannot tell good from corrupted answers;
`judge=None` writes none. Numbers are seeded and improve per
stage so the charts have something to show; one response carries markup to test escaping.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Literal

from cai.evaluation.judge_cases import AnswerKind, corrupt, load_judge_cases
from cai.evaluation.judge_check import judge_template, summarize_check
from cai.evaluation.pair_accuracy import PairScore, summarize
from cai.evaluation.records import (
    EvalRecord,
    JudgeCaseResult,
    JudgedAnswer,
    eval_record_id,
    summarize_stage,
)
from cai.pipeline.config import PipelineConfig
from cai.pipeline.heldout import load_heldout
from cai.pipeline.records import JudgeQuery
from cai.runfolder import JUDGE_CHECK_FILE

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
BASE_MODEL = "tiny"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _records(stage: int, model: str, rng: random.Random) -> list[EvalRecord]:
    heldout = load_heldout()
    rule_rate = 0.45 + 0.15 * stage
    judge_rate = 0.35 + 0.18 * stage
    out = []
    for i, item in enumerate(heldout.instructions):
        words = rng.randint(4, 30 + 10 * stage)
        text = " ".join(
            rng.choice(["the", "answer", "is", "a", "clear", "one", "yes"]) for _ in range(words)
        )
        if i == 0:
            text = HOSTILE
        rule_ok = rng.random() < rule_rate
        if i == 0:
            rule_ok = stage > 0  # a verdict change: the hostile text is among the examples
        margin = rng.gauss(judge_rate - 0.5, 1.0)
        out.append(
            EvalRecord(
                id=eval_record_id(stage, item.id),
                instruction_id=item.id,
                heldout_version=heldout.version,
                type=item.type,
                instruction=item.instruction,
                stage=stage,
                model=model,
                template="responses@1",
                temperature=0.0,
                max_tokens=64,
                seed=1,
                stop=["\n### Instruction:"],
                response=text,
                finish_reason="length" if words > 40 else "stop",
                response_tokens=words + rng.randint(0, 5),
                rules={"nonempty": True, "no_template_residue": rule_ok},
                rule_ok=rule_ok,
                judge_ok=margin > 0,
                judge_margin=margin,
            )
        )
    return out


def _train_events(stage: int, steps: int = 20) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        progress = step / steps
        rows.append(
            {
                "step": step,
                "total_steps": steps,
                "epoch": progress,
                "metrics": {
                    "loss": 0.693 * math.exp(-1.2 * progress * stage) + 0.02 * math.sin(step),
                    "rewards/margins": 0.5 * progress * stage,
                    "rewards/accuracies": min(1.0, 0.5 + 0.4 * progress),
                    "learning_rate": 5e-6,
                },
            }
        )
    return rows


def _pipeline_files(stage_dir: Path, rng: random.Random) -> None:
    n = 40
    instructions = [
        {"id": f"qa-{i:05d}", "instruction_id": f"qa-{i:05d}", "status": "ok"} for i in range(n)
    ]
    instructions += [
        {
            "id": f"qa-9{i:04d}",
            "instruction_id": f"qa-9{i:04d}",
            "status": "rejected",
            "reason": "near_duplicate",
        }
        for i in range(7)
    ]
    instructions.append(
        {
            "id": "qa-99999",
            "instruction_id": "qa-99999",
            "status": "rejected",
            "reason": "heldout_leak",
        }
    )
    _jsonl(stage_dir / "instructions.jsonl", instructions)
    tokens = {
        step: {"requests": 40 * k, "prompt_tokens": 9000 * k, "completion_tokens": 1200 * k}
        for k, step in enumerate(
            ("instructions", "responses", "critiques", "revisions", "judgements"), 1
        )
    }
    (stage_dir / "manifest.json").write_text(
        json.dumps(
            {"name": "stage", "tokens": tokens, "wall_s": 120.0, "gpu_s": 120.0, "cost_usd": 0.08}
        )
    )
    ok = [r for r in instructions if r["status"] == "ok"]
    _jsonl(
        stage_dir / "responses.jsonl",
        [{**r, "id": r["id"] + ".r"} for r in ok[:-1]]
        + [{**ok[-1], "status": "failed", "reason": "timeout"}],
    )
    _jsonl(stage_dir / "critiques.jsonl", [{**r, "id": r["id"] + ".c1"} for r in ok[:-1]])
    _jsonl(stage_dir / "revisions.jsonl", [{**r, "id": r["id"] + ".v1"} for r in ok[:-1]])
    _jsonl(stage_dir / "judgements.jsonl", [{**r, "id": r["id"] + ".j"} for r in ok[:-1]])
    pairs = []
    for r in ok[:-1]:
        roll = rng.random()
        if roll < 0.15:
            pairs.append({"id": r["id"] + ".p", "status": "skipped", "reason": "identical"})
        elif roll < 0.35:
            pairs.append({"id": r["id"] + ".p", "status": "skipped", "reason": "neither_ok"})
        else:
            pairs.append({"id": r["id"] + ".p", "status": "ok"})
    _jsonl(stage_dir / "pairs.jsonl", pairs)
    kept = [p for p in pairs if p["status"] == "ok"]
    cut = int(len(kept) * 0.9)
    _jsonl(stage_dir / "train.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * cut)
    _jsonl(
        stage_dir / "test.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}] * (len(kept) - cut),
    )


def _judged(kind: AnswerKind, text: str, margin: float, lean_a: float) -> JudgedAnswer:
    """Two queries whose good-minus-bad differences average to `margin`, plus a lean to A."""
    queries = [
        JudgeQuery(
            good_label=good,
            logprob_a=-1.0 + lean_a + (margin if good == "A" else -margin) / 2,
            logprob_b=-1.0 - (margin if good == "A" else -margin) / 2,
            method="top_logprobs",
            labels_in_top_k=2,
        )
        for good in ("A", "B")
    ]
    return JudgedAnswer(kind=kind, text=text, margin=margin, judge_ok=margin > 0, queries=queries)


def write_judge_check(run_dir: Path, judge: Literal["good", "chance"], rng: random.Random) -> None:
    cases = load_judge_cases()
    results = []
    for case, answers in corrupt(cases):
        judged = []
        for kind, text in answers.items():
            if judge == "good":
                margin = 1.5 if kind == "good" else rng.choice([-1.0, -0.5, 2.0])
            else:
                margin = rng.gauss(0.0, 0.3)
            judged.append(_judged(kind, text, margin, lean_a=0.0 if judge == "good" else 2.0))
        results.append(
            JudgeCaseResult(
                case_id=case.id, type=case.type, instruction=case.instruction, answers=judged
            )
        )
    pipeline = PipelineConfig()
    check = summarize_check(
        results,
        model=BASE_MODEL,
        cases_version=cases.version,
        template=judge_template(pipeline),
        pipeline=pipeline,
    )
    (run_dir / JUDGE_CHECK_FILE).write_text(check.model_dump_json(indent=2), encoding="utf-8")


def make_run(
    run_dir: Path,
    stages: int = 2,
    *,
    seed: int = 7,
    judge: Literal["good", "chance"] | None = "good",
) -> Path:
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if judge is not None:
        write_judge_check(run_dir, judge, random.Random(seed))
    all_records: list[EvalRecord] = []
    by_stage: dict[int, list[EvalRecord]] = {}
    manifest_stages = []
    timings = [
        {
            "stage": 0,
            "step": "baseline",
            "wall_s": 41.5,
            "gpu_s": 41.5,
            "completion_tokens": 3100,
            "cost_usd": 0.03,
        }
    ]
    for stage in range(stages + 1):
        model = BASE_MODEL if stage == 0 else f"stage{stage}-job{stage:04d}"
        records = _records(stage, model, rng)
        by_stage[stage] = records
        all_records += records
        stage_dir = run_dir / "stages" / str(stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        accuracy = None
        if stage > 0:
            scores = [
                PairScore(
                    index=i,
                    chosen_tokens=10,
                    rejected_tokens=12,
                    policy_chosen=-20.0,
                    policy_rejected=-22.0,
                    reference_chosen=-21.0,
                    reference_rejected=-21.5,
                    reward=rng.gauss(0.05 * stage, 0.08),
                )
                for i in range(24)
            ]
            _jsonl(stage_dir / "pair_scores.jsonl", [s.model_dump() for s in scores])
            accuracy = summarize(scores, model=model, reference_model=BASE_MODEL, beta=0.1)
            _jsonl(stage_dir / "train_events.jsonl", _train_events(stage))
            _pipeline_files(stage_dir, rng)
            manifest_stages.append({"stage": stage, "model": model})
            for step, wall in (
                ("generate", 120.0),
                ("upload", 1.2),
                ("train", 300.0 + 50 * stage),
                ("publish", 3.4),
                ("evaluate", 45.0),
            ):
                timings.append(
                    {
                        "stage": stage,
                        "step": step,
                        "wall_s": wall,
                        "gpu_s": wall if step != "upload" else 0.0,
                        "cost_usd": wall / 3600 * 2.5,
                    }
                )
        summary = summarize_stage(
            records,
            base=by_stage[0],
            previous=by_stage.get(stage - 1),
            previous_stage=stage - 1 if stage > 0 else None,
            pair_accuracy=accuracy,
        )
        (stage_dir / "eval_summary.json").write_text(
            summary.model_dump_json(indent=2), encoding="utf-8"
        )
    _jsonl(run_dir / "eval.jsonl", [r.model_dump() for r in all_records])
    _jsonl(run_dir / "steps.jsonl", timings)
    (run_dir / "manifest.json").write_text(
        json.dumps(
            {
                "name": run_dir.name,
                "base_model": BASE_MODEL,
                "stages": manifest_stages,
                "config": {"stages": stages},
            }
        ),
        encoding="utf-8",
    )
    return run_dir
