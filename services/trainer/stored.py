"""Reading back rows the trainer cannot validate any more, without letting one take a listing
down.

A row can stop validating: an older trainer stored `Infinity` as `null` (issue 13), or a
bound was tightened after the row was written. `salvage` reads such a row anyway: fields
that fail validation are dropped (their defaults take their place) and required ones are
filled from the row's own columns, and it says which fields it dropped, so that the caller
can show the record as what it is (store.py fails such a job with that reason). What the
trainer writes goes through `finite` first: JSON has no Infinity or NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# Each round drops the fields that failed the previous one; nested models need a few.
_ROUNDS = 8


class Unreadable(ValueError):
    """Nothing valid could be made of a stored row, even with fields dropped."""


def finite(value: Any) -> Any:
    """`value` with every non-finite float (inf, -inf, nan) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics mapping, as floats (booleans and the rest dropped)."""
    out: dict[str, float] = {}
    if not isinstance(metrics, Mapping):
        return out
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def problems_of(exc: ValidationError, limit: int = 3) -> list[str]:
    """`field: message` for the first few errors of a validation failure."""
    return [
        f"{'.'.join(str(part) for part in err['loc']) or 'the record'}: {err['msg']}"
        for err in exc.errors()[:limit]
    ]


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Delete the innermost object key on the path `loc`; False when there is none."""
    target: tuple[dict[str, Any], str] | None = None
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            target = (node, part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
    if target is None:
        return False
    container, key = target
    del container[key]
    return True


def salvage(
    model: type[M], raw: str | bytes | None, fill: Mapping[str, Any] | None = None
) -> tuple[M, list[str]]:
    """`model` from the stored JSON `raw`; on failure, the same with the failing fields
    dropped and missing required ones taken from `fill`. Returns the record and what was
    wrong with it ([] when it validated as stored); raises Unreadable when nothing valid
    can be made of it."""
    try:
        return model.model_validate_json(raw or ""), []
    except ValidationError as exc:
        problems = problems_of(exc)
    try:
        data = json.loads(raw or "")
    except ValueError:
        data = None
    data = finite(data) if isinstance(data, dict) else {}
    for _ in range(_ROUNDS):
        try:
            return model.model_validate(data), problems
        except ValidationError as exc:
            changed = False
            for err in exc.errors():
                loc = tuple(err["loc"])
                if err["type"] == "missing" and len(loc) == 1 and loc[0] in (fill or {}):
                    value = (fill or {})[str(loc[0])]
                    changed |= data.get(str(loc[0])) != value
                    data[str(loc[0])] = value
                else:
                    changed |= _drop(data, loc)
            if not changed:
                break
    raise Unreadable("; ".join(problems))
