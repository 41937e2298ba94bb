"""The adapter registry record, shared by the trainer (writes it) and the client (reads it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.names import SafeName


class AdapterRecord(BaseModel):
    """A trained LoRA adapter (or a merged model) as the trainer's registry lists it."""

    # Finite metrics only: a stored record must read back, and answer as valid JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    name: SafeName = Field(description="Unique name; also the folder name under the adapters root.")
    kind: str = Field(default="lora", description="`lora` for an adapter, `merged` for a model.")
    path: str = Field(description="Absolute path of the folder on the shared volume.")
    base_model: str = Field(description="The base model the adapter was trained on.")
    parent_adapter: str | None = Field(
        default=None, description="The adapter this one continued from (iterative DPO), if any."
    )
    dataset_id: str | None = Field(default=None, description="The training dataset's id.")
    job_id: str | None = Field(default=None, description="The job that produced it.")
    rank: int | None = Field(
        default=None, description="LoRA rank `r` (vLLM's --max-lora-rank must be >= it)."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Final training/eval metrics."
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="File name -> sha256 of every file in the folder."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="The effective PEFT and TRL configs used to train it."
    )
    created_at: datetime
