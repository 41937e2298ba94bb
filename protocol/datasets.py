"""Preference-pair rows and dataset records: the pipeline writes them, the trainer reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreferencePair(BaseModel):
    """One DPO training row. Extra keys (ids, metadata) are allowed and kept.

    The same shape loads with `datasets.load_dataset("json", ...)` and trains with a plain
    TRL `DPOTrainer`.
    """

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, description="The prompt both responses continue.")
    chosen: str = Field(min_length=1, description="The preferred continuation.")
    rejected: str = Field(min_length=1, description="The dispreferred continuation.")

    @model_validator(mode="after")
    def _chosen_differs_from_rejected(self) -> PreferencePair:
        if self.chosen == self.rejected:
            raise ValueError("`chosen` and `rejected` are identical: a pair must differ")
        return self


class DatasetRecord(BaseModel):
    """An uploaded JSONL dataset. The id is content-addressed: same bytes, same id."""

    id: str = Field(description="`ds-` + the first 16 hex digits of the sha256 of the bytes.")
    sha256: str
    rows: int = Field(description="Number of validated rows.")
    bytes: int
    name: str | None = Field(default=None, description="Optional label given at upload.")
    metadata_keys: list[str] = Field(
        default_factory=list, description="Extra keys found on rows besides prompt/chosen/rejected."
    )
    created_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)
