"""The linear layers of a base model, read from its weight files' headers without loading it:
what a LoRA `target_modules` entry may name, checked at submission.

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor with its shape, so the names cost a few KB of reading, not the model. A sharded
checkpoint lists its files in `model.safetensors.index.json`. A folder without safetensors
weights (another format, or a hub id) gives None: the check is skipped and the job finds out.

For the dense families this trainer serves (Qwen2, Llama, ...) the checkpoint's names are the
names PEFT matches against (`model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

INDEX = "model.safetensors.index.json"
# The safetensors format caps its header at 100 MB; anything larger is not a header.
MAX_HEADER_BYTES = 100_000_000


class WeightsUnreadable(ValueError):
    """A weight file's header could not be read (truncated, not safetensors)."""


def _header(path: Path) -> dict[str, object]:
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) != 8:
            raise WeightsUnreadable(f"{path.name} is shorter than a safetensors header")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise WeightsUnreadable(f"{path.name} does not start with a safetensors header")
        try:
            header = json.loads(stream.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightsUnreadable(f"{path.name}: the safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise WeightsUnreadable(f"{path.name}: the safetensors header is not an object")
    return header


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise WeightsUnreadable(f"{INDEX} is not a safetensors index") from exc
        # Names only, never paths: an index cannot point the trainer outside the folder.
        return sorted({folder / Path(str(name)).name for name in weight_map.values()})
    return sorted(folder.glob("*.safetensors"))


def linear_modules(folder: Path) -> set[str] | None:
    """Full names of the modules that hold a 2-D `weight` (the layers LoRA can adapt), or
    None when the folder has no safetensors weights to read."""
    files = _weight_files(folder) if folder.is_dir() else []  # a .gguf base is a file
    if not files:
        return None
    modules: set[str] = set()
    for path in files:
        for name, info in _header(path).items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if name.endswith(".weight") and isinstance(shape, list) and len(shape) == 2:
                modules.add(name.removesuffix(".weight"))
    return modules


def target_names(modules: set[str]) -> set[str]:
    """Every name a `target_modules` list entry may give to reach one of `modules`: PEFT
    matches an entry against a module's full name or any dotted suffix of it."""
    names: set[str] = set()
    for module in modules:
        parts = module.split(".")
        names.update(".".join(parts[i:]) for i in range(len(parts)))
    return names
