"""GET /metrics: Prometheus text (jobs by state, queue depth, training tokens/s)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.trainer.api.deps import Authorized, State

router = APIRouter(tags=["metrics"], dependencies=[Authorized])


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    body = await anyio.to_thread.run_sync(generate_latest, state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
