"""What every record of a run shares: ids, seeds, sampling, token usage, the base records.

Each step's own record type lives in its step module (cai.pipeline.steps); the record every
chain starts from (`InstructionRecord`) and the judge's sub-records (`JudgeQuery`,
`Verdict`, also read by the evaluation) live here. `cai.pipeline.records` gathers them all.

Ids (sortable, derived from the instruction id `qa-00012`):
    responses  qa-00012.r        critiques  qa-00012.c1, .c2 ...   revisions  qa-00012.v1 ...
    judgements qa-00012.j        pairs      qa-00012.p
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

InstructionType = Literal["qa", "completion", "generation", "response"]
INSTRUCTION_TYPES: tuple[InstructionType, ...] = ("qa", "completion", "generation", "response")
Status = Literal["ok", "rejected", "failed", "skipped"]


def derive_seed(run_seed: int, *parts: str | int) -> int:
    """A sampling seed for one request: a function of the run seed, the record id and the step.

    With one seed for every request, a near-uniform model samples the same tokens for every
    prompt (notes/vllm-cpu.md); per-record seeds keep outputs distinct and reproducible.
    """
    key = "|".join([str(run_seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & 0x7FFFFFFF


def instruction_id(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}"


def response_id(iid: str) -> str:
    return f"{iid}.r"


def critique_id(iid: str, round_: int) -> str:
    return f"{iid}.c{round_}"


def revision_id(iid: str, round_: int) -> str:
    return f"{iid}.v{round_}"


def judgement_id(iid: str) -> str:
    return f"{iid}.j"


def pair_id(iid: str) -> str:
    return f"{iid}.p"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Model):
    temperature: float
    top_p: float
    max_tokens: int
    stop: list[str]
    seed: int


class TokenUsage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Record(_Model):
    id: str
    instruction_id: str
    parent_id: str | None = None
    status: Status = "ok"
    reason: str | None = Field(default=None, description="Why the record is not `ok`.")


class GeneratedRecord(Record):
    model: str | None = None
    template: str | None = None
    sampling: Sampling | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    text: str = ""
    finish_reason: str | None = None


class InstructionRecord(GeneratedRecord):
    type: InstructionType
    attempt: int = Field(description="Index of the generation attempt within its type.")
    source: Literal["model", "file"] = "model"
    few_shot: list[int] = Field(default_factory=list, description="Seed-pool indices shown.")
    duplicate_of: str | None = Field(
        default=None, description="The earlier instruction it repeats."
    )


class JudgeQuery(_Model):
    """One A/B question: which letter meant `good`, the labels' log-probs, and how read."""

    good_label: str
    logprob_a: float
    logprob_b: float
    method: Literal["top_logprobs", "scored"]
    labels_in_top_k: int | None = Field(
        default=None,
        ge=0,
        le=2,
        description=(
            "How many of the two labels the next token's top-k held (2: both read, not "
            "floored). None: not recorded (older runs) or no top-k was asked (`scored`)."
        ),
    )
    usage: TokenUsage = Field(default_factory=TokenUsage)


class Verdict(_Model):
    response_id: str
    rules: dict[str, bool] = Field(description="Each rule check: True = passed.")
    rules_ok: bool
    truncated: bool
    judge_margin: float | None = Field(
        default=None,
        description="Mean over queries of log P(good letter) - log P(bad letter); > 0 means good.",
    )
    judge_queries: list[JudgeQuery] = Field(default_factory=list)
    judge_ok: bool | None = None
    ok: bool = Field(description="The combined verdict (config `judge.ok_rule`).")
