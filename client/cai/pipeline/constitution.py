"""The constitution: principles with a critique request and a revision request each.

    constitution = load_constitution()              # the packaged constitution.yaml
    constitution = load_constitution("mine.yaml")   # a user's file, same shape
    principle = constitution.sample(seed)           # one principle, chosen by `seed`

A principle is sampled per critique round (uniformly, or among those with the configured
tags), never "the first one" (notes/prior-art.md), and its id is recorded on the critique.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.yamlfile import load_yaml, read_text, validate

DEFAULT_CONSTITUTION = Path(__file__).resolve().parent / "constitution.yaml"
Tag = Literal["helpful", "harmless", "honest"]


class ConstitutionError(ValueError):
    """The constitution file is missing or malformed; the message says what to fix."""


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    tags: list[Tag] = Field(min_length=1)
    critique_request: str = Field(min_length=10)
    revision_request: str = Field(min_length=10)


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int | str
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for principle in principles:
            if principle.id in seen:
                raise ValueError(f"principle id {principle.id!r} appears twice; ids must be unique")
            seen.add(principle.id)
        return principles

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"

    def get(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise KeyError(f"no principle {principle_id!r} in constitution {self.tag}")

    def eligible(self, tags: list[str] | None = None) -> list[Principle]:
        if not tags:
            return list(self.principles)
        chosen = [p for p in self.principles if set(p.tags) & set(tags)]
        if not chosen:
            raise ConstitutionError(f"no principle of {self.tag} has any of the tags {tags}")
        return chosen

    def sample(self, seed: int, tags: list[str] | None = None) -> Principle:
        return random.Random(seed).choice(self.eligible(tags))


def load_constitution(path: str | Path | None = None) -> Constitution:
    file = Path(path) if path else DEFAULT_CONSTITUTION
    text = read_text(file, "constitution", ConstitutionError)
    data = load_yaml(text, file, "constitution", ConstitutionError)
    return validate(Constitution, data, str(file), ConstitutionError, text=text)
