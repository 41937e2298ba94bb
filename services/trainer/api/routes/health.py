"""GET /health (no key needed: load balancers and `embedded.launch` poll it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import anyio
from fastapi import APIRouter

from protocol.jobs import JobState
from protocol.trainer_api import TrainerHealth
from services.trainer.api.deps import State

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("cai-bootstrap")
    except PackageNotFoundError:
        return "0.0.0"


@router.get("/health", response_model=TrainerHealth)
async def health(state: State) -> TrainerHealth:
    counts = await anyio.to_thread.run_sync(state.store.count_by_state)
    return TrainerHealth(
        version=_version(),
        device=state.device,
        workers=state.settings.workers,
        queue_depth=counts[JobState.queued.value],
        running=counts[JobState.running.value],
    )
