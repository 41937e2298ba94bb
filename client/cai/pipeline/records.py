"""The records every step writes, one JSON object per line of `runs/<name>/<step>.jsonl`.

Every record carries its `id`, the id it derives from (`parent_id`), its instruction's id,
the template that built its prompt (`name@version`), the model that wrote it, the sampling
parameters (with the per-record `seed`) and the server's token usage. Nothing in a record
depends on timing (no timestamps, no endpoint), so an interrupted-and-resumed run writes the
same bytes as an uninterrupted one; times live in `manifest.json`.

Each step's record type is defined in its step module (cai.pipeline.steps), the parts they
share in cai.pipeline.schema; this module gathers them, with the step files of a run folder
(`STEPS`, `RECORD_TYPES`: those of `cai.pipeline.steps.PIPELINE`).

Ids (sortable, derived from the instruction id `qa-00012`):
    responses  qa-00012.r        critiques  qa-00012.c1, .c2 ...   revisions  qa-00012.v1 ...
    judgements qa-00012.j        pairs      qa-00012.p
"""

from __future__ import annotations

from cai.pipeline.schema import (
    INSTRUCTION_TYPES,
    GeneratedRecord,
    InstructionRecord,
    InstructionType,
    JudgeQuery,
    Record,
    Sampling,
    Status,
    TokenUsage,
    Verdict,
    critique_id,
    derive_seed,
    instruction_id,
    judgement_id,
    pair_id,
    response_id,
    revision_id,
)
from cai.pipeline.steps import PIPELINE
from cai.pipeline.steps.critiques import CritiqueRecord
from cai.pipeline.steps.judgements import JudgementRecord
from cai.pipeline.steps.pairs import PairRecord
from cai.pipeline.steps.responses import ResponseRecord
from cai.pipeline.steps.revisions import RevisionRecord

STEPS: tuple[str, ...] = PIPELINE.names
RECORD_TYPES: dict[str, type[Record]] = PIPELINE.record_types

__all__ = [
    "INSTRUCTION_TYPES",
    "RECORD_TYPES",
    "STEPS",
    "CritiqueRecord",
    "GeneratedRecord",
    "InstructionRecord",
    "InstructionType",
    "JudgeQuery",
    "JudgementRecord",
    "PairRecord",
    "Record",
    "ResponseRecord",
    "RevisionRecord",
    "Sampling",
    "Status",
    "TokenUsage",
    "Verdict",
    "critique_id",
    "derive_seed",
    "instruction_id",
    "judgement_id",
    "pair_id",
    "response_id",
    "revision_id",
]
