"""Held-out evaluation of the base and of every stage: rules and judge apart, with intervals.

    from cai.evaluation import EvalSettings, evaluate_stage
    summary = await evaluate_stage(gen, run_dir, stage=1, model="stage1-j1", base_model="tiny",
                                   pipeline=config, test_pairs=run_dir / "stages/1/test.jsonl")

- the held-out set (`heldout_v1.yaml`) and `HeldoutGuard`, which keeps it out of every
  training input, live in `cai.pipeline.heldout` (the pipeline needs them; re-exported here).
- `evaluate`: a stage's held-out run, resumed record by record, and its summary (`EvalSummary`).
- `answers`: one instruction answered, its rule checks and its judge verdict, kept apart.
- `settings`: `EvalSettings` (the `evaluation:` of a run config) and `EvaluationError`.
- `pair_accuracy`: the DPO implicit reward on held-out pairs, scored through vLLM.
- `judge_check` and `judge_cases`: the judge itself measured on hand-checkable cases
  (`judge_cases_v1.yaml` and corrupted copies), so judge figures come with their reliability.
- `records`: the `eval.jsonl` record and the summary models; `stats`: Wilson, McNemar, lengths.
"""

from cai.evaluation.evaluate import evaluate_stage
from cai.evaluation.judge_check import check_judge
from cai.evaluation.pair_accuracy import PairAccuracy, VllmTokenizer, pair_accuracy
from cai.evaluation.records import (
    EvalRecord,
    EvalSummary,
    JudgeCheck,
    read_eval_records,
    summarize_stage,
)
from cai.evaluation.settings import EvalSettings, EvaluationError
from cai.pipeline.heldout import HeldoutGuard, HeldoutSet, load_heldout

__all__ = [
    "EvalRecord",
    "EvalSettings",
    "EvalSummary",
    "EvaluationError",
    "HeldoutGuard",
    "HeldoutSet",
    "JudgeCheck",
    "PairAccuracy",
    "VllmTokenizer",
    "check_judge",
    "evaluate_stage",
    "load_heldout",
    "pair_accuracy",
    "read_eval_records",
    "summarize_stage",
]
