"""The fixed, versioned held-out instruction set, and the guard that keeps it out of training.

    from cai.pipeline.heldout import load_heldout, HeldoutGuard
    heldout = load_heldout()                 # the packaged heldout_v1.yaml
    guard = HeldoutGuard(heldout)
    guard.match("What's the chemical symbol for gold?")   # -> "ho1-qa-01"

Evaluation numbers mean something only if no training step ever saw the questions. Two
leaks are possible: the seed pool (few-shot examples of the instruction step) containing a
held-out instruction, and the model *generating* one (it may, since the seeds and the
held-out set cover similar ground). The first is a unit test over the seed pool; the second
is `HeldoutGuard.match`, which the pipeline's instruction step calls on every generated
instruction, dropping matches (exact after normalisation, or near duplicates by character
shingle similarity). The set is versioned: a changed instruction is a new file, because
results are comparable only within one version.

It lives in the pipeline, not in `cai.evaluation`: the pipeline needs it (the guard, and
`PipelineInputs` loads the set a config names), and the evaluation builds on the pipeline, so
the set can be read from both sides without either importing the other in a circle.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The pipeline's own duplicate measure: "the same instruction" means one thing everywhere.
from cai.pipeline.dedupe import jaccard, normalise, shingles
from cai.pipeline.schema import INSTRUCTION_TYPES, InstructionType
from cai.yamlfile import load_packaged

DEFAULT_HELDOUT = "heldout_v1.yaml"

# Character 5-gram Jaccard at or above this is a leak. Deliberately conservative: measured on
# the v1 set, rephrasings of a held-out item score 0.51-0.85 ("what is the chemical symbol of
# gold" 0.51), distinct held-out items at most 0.23 against each other, and same-template
# questions on another subject ("How many sides does an octagon have?") 0.5-0.6, which are
# dropped too: losing a few generated instructions costs little, a leak costs the evaluation.
NEAR_DUPLICATE_THRESHOLD = 0.5


class HeldoutError(ValueError):
    """The held-out file is missing or malformed; the message names the file and the field."""


class HeldoutInstruction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Stable id within the set.")
    type: InstructionType
    instruction: str = Field(min_length=3)
    reference: list[str] = Field(
        default_factory=list,
        description="Facts a correct answer mentions (any one suffices, case-insensitive).",
    )


class HeldoutSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="Recorded on every eval record.")
    instructions: list[HeldoutInstruction] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> HeldoutSet:
        ids = Counter(item.id for item in self.instructions)
        texts = Counter(normalise(item.instruction) for item in self.instructions)
        repeated = [key for key, count in (ids + texts).items() if count > 1]
        if repeated:
            raise ValueError(f"held-out ids and instructions must be unique; repeated: {repeated}")
        return self

    def by_type(self) -> dict[str, list[HeldoutInstruction]]:
        groups: dict[str, list[HeldoutInstruction]] = {kind: [] for kind in INSTRUCTION_TYPES}
        for item in self.instructions:
            groups[item.type].append(item)
        return groups


def load_heldout(path: Path | str | None = None) -> HeldoutSet:
    """Load a held-out set: `path`, or the packaged `heldout_v1.yaml` when None."""
    return load_packaged(
        HeldoutSet, path, "cai.pipeline", DEFAULT_HELDOUT, "held-out set", HeldoutError
    )


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the character shingles of the normalised texts, in [0, 1]."""
    return jaccard(shingles(normalise(a)), shingles(normalise(b)))


class HeldoutGuard:
    """Answers whether a text is (nearly) a held-out instruction; shingles computed once."""

    def __init__(self, heldout: HeldoutSet, threshold: float = NEAR_DUPLICATE_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
        self.version = heldout.version
        self.threshold = threshold
        self._exact = {normalise(item.instruction): item.id for item in heldout.instructions}
        self._shingles = [
            (item.id, shingles(normalise(item.instruction))) for item in heldout.instructions
        ]

    def match(self, text: str) -> str | None:
        """The id of the held-out instruction `text` duplicates, or None."""
        norm = normalise(text)
        if norm in self._exact:
            return self._exact[norm]
        candidate = shingles(norm)
        best_id, best = None, 0.0
        for item_id, item_shingles in self._shingles:
            score = jaccard(candidate, item_shingles)
            if score > best:
                best_id, best = item_id, score
        return best_id if best >= self.threshold else None

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.match(text) is not None


__all__ = [
    "INSTRUCTION_TYPES",
    "HeldoutError",
    "HeldoutGuard",
    "HeldoutInstruction",
    "HeldoutSet",
    "InstructionType",
    "load_heldout",
    "normalise",
    "similarity",
]
