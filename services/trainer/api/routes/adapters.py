"""GET /v1/adapters, GET /v1/adapters/{name}: trained adapters and merged models."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from protocol.adapters import AdapterRecord
from protocol.errors import Problem
from protocol.trainer_api import AdapterList
from services.trainer.api.deps import Authorized, State
from services.trainer.core.errors import NotFound

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], dependencies=[Authorized])


@router.get("", response_model=AdapterList)
def list_adapters(state: State, kind: Literal["lora", "merged"] | None = None) -> AdapterList:
    return AdapterList(adapters=state.store.list_adapters(kind))


@router.get("/{name}", response_model=AdapterRecord, responses={404: {"model": Problem}})
def get_adapter(name: str, state: State) -> AdapterRecord:
    record = state.store.get_adapter(name)
    if record is None:
        raise NotFound(f"unknown adapter {name[:128]!r}: see GET /v1/adapters")
    return record
