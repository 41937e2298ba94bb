"""The seed pool (`seed_pool.yaml`): few-shot examples for every prompt, written by the project.

pool = load_seed_pool()
pool.types["qa"].instructions       # example instructions of the type
pool.types["qa"].examples           # instruction + response examples
pool.sample_indices(8, 3, seed)     # which examples a prompt shows, chosen by its seed
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.pipeline.schema import INSTRUCTION_TYPES
from cai.yamlfile import load_yaml, read_text, validate

DEFAULT_SEED_POOL = Path(__file__).resolve().parent / "seed_pool.yaml"


class SeedPoolError(ValueError):
    """The seed pool file is missing or malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Example(_Strict):
    instruction: str = Field(min_length=1)
    response: str = Field(min_length=1)


class TypeSeeds(_Strict):
    description: str = Field(min_length=1)
    instructions: list[str] = Field(min_length=1)
    examples: list[Example] = Field(min_length=1)


class CritiqueExample(_Strict):
    instruction: str
    response: str
    principle: str
    critique: str
    revision: str


class SeedPool(_Strict):
    version: int | str
    types: dict[str, TypeSeeds]
    critique_examples: list[CritiqueExample] = Field(min_length=1)

    @model_validator(mode="after")
    def _every_type(self) -> SeedPool:
        missing = [t for t in INSTRUCTION_TYPES if t not in self.types]
        if missing:
            raise ValueError(f"seed pool lacks instruction types {missing}")
        return self

    @staticmethod
    def sample_indices(size: int, k: int, seed: int) -> list[int]:
        """`k` distinct indices out of `size`, in a seed-determined order."""
        return random.Random(seed).sample(range(size), min(k, size))


def load_seed_pool(path: str | Path | None = None) -> SeedPool:
    file = Path(path) if path else DEFAULT_SEED_POOL
    text = read_text(file, "seed pool", SeedPoolError)
    data = load_yaml(text, file, "seed pool", SeedPoolError)
    return validate(SeedPool, data, str(file), SeedPoolError, text=text)
