"""Response bodies of the trainer API that wrap the records (lists, health)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from protocol.adapters import AdapterRecord


class AdapterList(BaseModel):
    adapters: list[AdapterRecord]


class TrainerHealth(BaseModel):
    status: str = Field(default="ok", description="`ok` while the service answers.")
    version: str
    device: str = Field(description="Where jobs run: `cpu` or `cuda`.")
    workers: int = Field(description="Jobs that may run at once.")
    queue_depth: int = Field(description="Jobs waiting to run.")
    running: int = Field(description="Jobs running now.")
