"""Step 1: the model writes instructions, few-shot prompted with seed instructions of one type.

    prompt, shown = build_prompt(template, pool, "qa", few_shot=4, seed=seed)
    text, reason = parse(choice.text)          # reason is None when usable

Every attempt is one request with its own seed. Candidates are accepted in attempt order
(`runner` holds early arrivals back), so which ones are duplicates does not depend on which
answer came back first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cai.pipeline.prompts import Template, join_blocks
from cai.pipeline.schema import INSTRUCTION_TYPES, InstructionType
from cai.pipeline.sections import SamplingConfig, Section
from cai.pipeline.seeds import SeedPool
from cai.yamlfile import decode

# An instruction shorter than this many word characters is noise, not a task.
MIN_CHARS = 8


class InstructionsConfig(Section):
    source: Literal["generate", "file"] = Field(
        default="generate", description="Write instructions with the model, or read `file`."
    )
    file: str | None = Field(
        default=None, description="JSONL with {type, text} (and optional id) per line."
    )
    counts: dict[InstructionType, Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {t: 250 for t in INSTRUCTION_TYPES},
        description="Instructions to keep per type (after duplicate removal); 0 leaves a type "
        "out, and at least one must be above 0.",
    )
    few_shot: int = Field(default=4, ge=1, description="Seed instructions shown per prompt.")
    max_attempts_factor: float = Field(
        default=3.0,
        ge=1.0,
        description="Stop a type after count x this many attempts (duplicates are not refilled "
        "from the pool: a shortfall is reported, never papered over).",
    )
    near_duplicate_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Shingle Jaccard at or above which texts are duplicates.",
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=128)
    )

    @model_validator(mode="after")
    def _file_when_file(self) -> InstructionsConfig:
        if self.source == "file" and not self.file:
            raise ValueError("instructions.source is 'file': set instructions.file to a JSONL path")
        if self.source == "generate" and not any(self.counts.values()):
            raise ValueError("instructions.counts asks for no instruction: give a type a count")
        return self


def build_prompt(
    template: Template, pool: SeedPool, kind: InstructionType, *, few_shot: int, seed: int
) -> tuple[str, list[int]]:
    seeds = pool.types[kind]
    shown = pool.sample_indices(len(seeds.instructions), few_shot, seed)
    blocks = [template.render("preamble", type_description=seeds.description)]
    blocks += [
        template.render("example", number=str(n), text=seeds.instructions[i].strip())
        for n, i in enumerate(shown, start=1)
    ]
    blocks.append(template.render("query", number=str(len(shown) + 1)))
    return join_blocks(blocks), shown


def parse(text: str) -> tuple[str, str | None]:
    """The instruction in a completion, and why it is unusable (None if it is usable)."""
    cleaned = text.strip()
    if sum(ch.isalnum() for ch in cleaned) < MIN_CHARS:
        return cleaned, "empty"
    if cleaned.startswith("###"):
        return cleaned, "template_residue"
    return cleaned, None


class InstructionFileError(ValueError):
    """An instructions file cannot be used; the message names the file and the line."""


def read_instruction_file(path: str | Path) -> list[tuple[str | None, InstructionType, str]]:
    """(id or None, type, text) per line of a JSONL file of `{"type", "text"[, "id"]}`.

    The whole file is checked before anything runs: one bad line refuses the file (with its
    line number) instead of stopping a run half-way. Blank lines are skipped; a UTF-8
    byte-order mark is accepted.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InstructionFileError(
            f"cannot read instructions file {path}: {exc.strerror or exc}"
        ) from None
    rows: list[tuple[str | None, InstructionType, str]] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = decode(raw, str(path), InstructionFileError, first_line=number)
        if not line.strip():
            continue
        given_id, kind, text = _parse_line(line, f"{path}:{number}")
        if given_id is not None:
            if given_id in first_seen:
                raise InstructionFileError(
                    f"{path}:{number}: id {given_id!r} is already used on line "
                    f"{first_seen[given_id]}; ids must be unique"
                )
            first_seen[given_id] = number
        rows.append((given_id, kind, text))
    if not rows:
        raise InstructionFileError(f"{path}: no instructions (the file is empty)")
    return rows


def _parse_line(line: str, where: str) -> tuple[str | None, InstructionType, str]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InstructionFileError(f"{where}: not JSON ({exc})") from None
    if not isinstance(row, dict) or "type" not in row or "text" not in row:
        raise InstructionFileError(f"{where}: expected a JSON object with `type` and `text`")
    kind, text, given_id = row["type"], row["text"], row.get("id")
    if kind not in INSTRUCTION_TYPES:
        raise InstructionFileError(f"{where}: `type` {kind!r} is not one of {INSTRUCTION_TYPES}")
    if not isinstance(text, str) or not text.strip():
        raise InstructionFileError(f"{where}: `text` must be a non-empty string")
    if given_id is not None and (
        not isinstance(given_id, str) or not given_id.strip() or given_id != given_id.strip()
    ):
        raise InstructionFileError(
            f"{where}: `id` must be a non-empty string without surrounding spaces"
        )
    return given_id, kind, text.strip()
