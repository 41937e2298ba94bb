"""The judge check's hand-checkable cases (`judge_cases_v1.yaml`) and their corrupted copies.

    cases = load_judge_cases()            # the packaged judge_cases_v1.yaml
    for case, answers in corrupt(cases):
        answers["good"], answers["truncated"], answers["off_topic"], ...

Every case has a correct `good` answer and a hand-written `wrong` one (the key fact changed).
The other corruptions are made here, deterministically, so a new kind costs code and not
thirty hand-written texts, and no reader can wonder whether a corruption was written to suit
the judge. What each kind tests:

    truncated   cut mid-sentence at ~40% of its words: does the judge notice an unfinished answer?
    repeated    the first sentence looped: the degenerate output of a small base model
    off_topic   another case's good answer: fluent and true, but not an answer to this question
    wrong_fact  the `wrong` text: fluent and on topic, with the key fact changed
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.pipeline.dedupe import normalise
from cai.pipeline.records import InstructionType, derive_seed
from cai.yamlfile import load_packaged

DEFAULT_JUDGE_CASES = "judge_cases_v1.yaml"
AnswerKind = Literal["good", "truncated", "repeated", "off_topic", "wrong_fact"]
CORRUPTIONS: tuple[AnswerKind, ...] = ("truncated", "repeated", "off_topic", "wrong_fact")
# Share of the words a truncated answer keeps: well short of a whole answer, long enough that
# the judge still sees the start of the right one.
TRUNCATE_SHARE = 0.4
# Copies of the looped sentence: six is one more than the rules' default
# `max_consecutive_repeats` (5), and with 4+ sentences the unique-sentence ratio is 1/6.
REPEATS = 6
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class JudgeCasesError(ValueError):
    """The judge cases file is missing or malformed; the message names the file and field."""


class JudgeCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Stable id within the set.")
    type: InstructionType
    instruction: str = Field(min_length=3)
    good: str = Field(min_length=3, description="A correct answer, 1-3 sentences.")
    wrong: str = Field(min_length=3, description="`good` with its key fact changed.")

    @model_validator(mode="after")
    def _wrong_differs(self) -> JudgeCase:
        if normalise(self.wrong) == normalise(self.good):
            raise ValueError(f"case {self.id}: `wrong` must change the good answer's key fact")
        return self


class JudgeCases(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="Recorded in judge_check.json.")
    rotation_seed: int = Field(default=0, description="Picks the off-topic rotation.")
    cases: list[JudgeCase] = Field(min_length=2, description="Off-topic needs another case.")

    @model_validator(mode="after")
    def _unique(self) -> JudgeCases:
        ids = Counter(case.id for case in self.cases)
        texts = Counter(normalise(case.instruction) for case in self.cases)
        answers = Counter(normalise(case.good) for case in self.cases)
        repeated = [key for key, count in (ids + texts + answers).items() if count > 1]
        if repeated:
            raise ValueError(f"case ids, instructions and answers must be unique: {repeated}")
        return self


def load_judge_cases(path: Path | str | None = None) -> JudgeCases:
    """Load a judge cases file: `path`, or the packaged `judge_cases_v1.yaml` when None."""
    return load_packaged(
        JudgeCases, path, "cai.evaluation", DEFAULT_JUDGE_CASES, "judge cases file", JudgeCasesError
    )


def truncated(text: str, share: float = TRUNCATE_SHARE) -> str:
    """The first `share` of the words, with no closing punctuation: it stops mid-sentence."""
    words = text.split()
    keep = max(1, min(len(words) - 1, round(len(words) * share)))
    return " ".join(words[:keep]).rstrip(".,;:!?")


def repeated(text: str, times: int = REPEATS) -> str:
    """The first sentence, `times` times in a row: what a looping base model writes."""
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()
    if first[-1:] not in {".", "!", "?"}:
        first += "."  # a sentence end, so the rules' sentence split sees every copy
    return " ".join([first] * times)


def rotation(count: int, seed: int) -> int:
    """A shift in 1..count-1: case i takes case (i + shift) % count's answer, never its own."""
    if count < 2:
        raise ValueError("off-topic answers need at least two cases")
    return 1 + derive_seed(seed, "judge-cases", "off_topic") % (count - 1)


def corrupt(cases: JudgeCases) -> list[tuple[JudgeCase, dict[AnswerKind, str]]]:
    """Every case with its good answer and one corrupted copy per kind, in file order."""
    shift = rotation(len(cases.cases), cases.rotation_seed)
    out: list[tuple[JudgeCase, dict[AnswerKind, str]]] = []
    for i, case in enumerate(cases.cases):
        other = cases.cases[(i + shift) % len(cases.cases)]
        answers: dict[AnswerKind, str] = {
            "good": case.good,
            "truncated": truncated(case.good),
            "repeated": repeated(case.good),
            "off_topic": other.good,
            "wrong_fact": case.wrong,
        }
        out.append((case, answers))
    return out


__all__ = [
    "CORRUPTIONS",
    "DEFAULT_JUDGE_CASES",
    "AnswerKind",
    "JudgeCase",
    "JudgeCases",
    "JudgeCasesError",
    "corrupt",
    "load_judge_cases",
    "repeated",
    "rotation",
    "truncated",
]
