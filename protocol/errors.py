"""The error body every service of the project answers with (RFC 9457 problem details)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An `application/problem+json` body.

    `detail` is written for the caller: it says what was wrong and what to change.
    `errors` lists field-level problems (request validation) when there are several.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="A short, human-readable summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(default="", description="What went wrong and how to fix it.")
    instance: str | None = Field(default=None, description="The request path that failed.")
    errors: list[dict[str, object]] = Field(
        default_factory=list, description="Field-level validation problems, if any."
    )
