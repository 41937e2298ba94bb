"""Reading YAML config files into pydantic models, with errors that name the field.

data = read_mapping(path, "run config", RunConfigError)
config = validate(RunConfig, data, str(path), RunConfigError)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The YAML file's top-level mapping; `error(message)` if unreadable or not a mapping."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {file} must be a mapping of fields")
    return data


def validate(model: type[M], data: dict[str, Any], source: str, error: type[Exception]) -> M:
    """`model` from `data`; `error("<source>: field.path: problem; ...")` if invalid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise error(f"{source}: {problems}") from exc
