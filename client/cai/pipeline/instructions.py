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

from cai.pipeline.prompts import Template, join_blocks
from cai.pipeline.records import INSTRUCTION_TYPES, InstructionType
from cai.pipeline.seeds import SeedPool

# An instruction shorter than this many word characters is noise, not a task.
MIN_CHARS = 8


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
    """An instructions file line is not {type, text}; the message names the line."""


def read_instruction_file(path: str | Path) -> list[tuple[str | None, InstructionType, str]]:
    """(id or None, type, text) per line of a JSONL file of `{"type", "text"[, "id"]}`."""
    rows: list[tuple[str | None, InstructionType, str]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                kind, text = row["type"], row["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InstructionFileError(
                    f"{path}:{number}: expected a JSON object with `type` and `text` ({exc})"
                ) from exc
            if kind not in INSTRUCTION_TYPES or not isinstance(text, str) or not text.strip():
                raise InstructionFileError(
                    f"{path}:{number}: `type` must be one of {INSTRUCTION_TYPES} and `text` non-empty"
                )
            rows.append((row.get("id"), kind, text.strip()))
    return rows
