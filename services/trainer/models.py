"""Where base models come from: a folder (or a `.gguf` file) under a configured model root, a
merged model this trainer registered, or (only where downloads are allowed) a hub id. Nothing
else: a name can never point the trainer at an arbitrary path. A `.gguf` file is converted
into a plain folder by the job that first needs it (services.modelfiles.convert)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.trainer.core.config import TrainerSettings
from services.trainer.core.errors import Unprocessable
from services.trainer.store import Store

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str
    """A local folder, or the hub id itself for `kind == "hub"`."""
    kind: str  # local | merged | hub (a local `path` may be a .gguf file)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _is_gguf_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def _under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def available_models(settings: TrainerSettings, limit: int = 20) -> list[str]:
    names: list[str] = []
    for root in settings.model_roots:
        if root.is_dir():
            names.extend(p.name for p in sorted(root.iterdir()) if _is_model_dir(p))
    return names[:limit]


def resolve_base_model(name: str, settings: TrainerSettings, store: Store) -> ResolvedModel:
    if not name or "\x00" in name or len(name) > 1024:
        raise Unprocessable("`base_model` must be a non-empty model name without NUL characters")
    merged = store.get_adapter(name)
    if merged is not None and merged.kind == "merged":
        return ResolvedModel(name=name, path=merged.path, kind="merged")
    candidate = Path(name)
    candidates = (
        [candidate] if candidate.is_absolute() else [root / name for root in settings.model_roots]
    )
    for path in candidates:
        real = path.resolve()
        if any(_under(real, root) for root in settings.model_roots) and (
            _is_model_dir(real) or _is_gguf_file(real)
        ):
            return ResolvedModel(name=name, path=str(real), kind="local")
    if settings.allow_hub_models and HUB_ID.fullmatch(name) and ".." not in name:
        return ResolvedModel(name=name, path=name, kind="hub")
    known = ", ".join(available_models(settings)) or "none"
    hub = (
        "hub ids are accepted"
        if settings.allow_hub_models
        else "hub ids are off on this trainer (CAI_TRAINER_ALLOW_HUB_MODELS)"
    )
    raise Unprocessable(
        f"unknown base model {name[:200]!r}: use a model folder under the trainer's model "
        f"roots (available: {known}) or a merged model registered here; {hub}",
        field="base_model",
    )
