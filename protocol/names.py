"""Names that become folder names on disk (adapters, models, runs) must not escape them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = (
    "1-128 characters from letters, digits, '.', '_' and '-', starting with a letter or digit "
    "(no '/', '..', spaces or control characters)"
)


def check_name(value: str) -> str:
    """Return `value` if it is a safe single path component, else raise ValueError."""
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid name {value[:64]!r}: use {NAME_RULE}")
    return value


SafeName = Annotated[str, AfterValidator(check_name)]
