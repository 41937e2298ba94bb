"""The trainer's FastAPI app. `create_app(settings)` builds everything; nothing happens at
import. The runner starts and stops with the app's lifespan.

    uvicorn --factory services.trainer.app:create_app   # settings from CAI_TRAINER_*
    python -m services.trainer                            # the same, with host/port from settings
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.trainer.api.deps import Authorized
from services.trainer.api.door import BodyLimit, Door
from services.trainer.api.errors import document_problems, install_error_handlers
from services.trainer.api.routes import (
    adapters,
    dashboard,
    datasets,
    health,
    jobs,
    metrics,
    openai_files,
    openai_fine_tuning,
)
from services.trainer.core.config import TrainerSettings
from services.trainer.openai_compat.errors import document_openai_errors
from services.trainer.state import TrainerState

DESCRIPTION = """DPO and merge jobs over REST, with a durable queue, live progress and an
adapter registry. Errors are `application/problem+json`. When the trainer has an API key,
every route but `/health` needs `Authorization: Bearer <key>`. `/v1/files` and
`/v1/fine_tuning/jobs` speak OpenAI's fine-tuning API (and its error body) over the same
datasets and DPO jobs, for the `openai` SDK."""


WORKER_THREADS = 200


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()
    state = TrainerState.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run on anyio's worker threads (40 by default). A burst of submissions,
        # each waiting its turn for SQLite's write lock, would hold them all and leave status
        # polls queueing for a thread; reads need no lock in WAL mode, so give them threads.
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        await anyio.to_thread.run_sync(state.runner.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.runner.stop)
            state.db.close()

    app = FastAPI(
        title="cai trainer",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.trainer = state
    install_error_handlers(app)
    routers = (
        health,
        metrics,
        datasets,
        jobs,
        adapters,
        dashboard,
        openai_files,
        openai_fine_tuning,
    )
    for module in routers:
        app.include_router(module.router)
    default_openapi = app.openapi

    def openapi_with_problems() -> dict[str, Any]:
        # FastAPI caches the schema; both rewrites are idempotent.
        return document_openai_errors(document_problems(default_openapi()))

    app.openapi = openapi_with_problems  # type: ignore[method-assign]
    _add_docs(app)
    app.add_middleware(
        Door,
        default=BodyLimit(
            settings.max_request_bytes,
            f"the request body is larger than the limit of {settings.max_request_bytes} bytes "
            "(a job spec is a few KB): send less, or raise CAI_TRAINER_MAX_REQUEST_BYTES on "
            "the trainer",
        ),
        routes={
            ("POST", "/v1/datasets"): datasets.upload_body_limit(settings.max_upload_bytes),
            ("POST", "/v1/files"): datasets.upload_body_limit(settings.max_upload_bytes),
        },
    )
    return app


def _add_docs(app: FastAPI) -> None:
    """OpenAPI and Swagger UI behind the key like every route but /health."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Authorized])
    async def openapi() -> JSONResponse:
        schema: dict[str, Any] = app.openapi()
        return JSONResponse(schema)

    @app.get("/docs", include_in_schema=False, dependencies=[Authorized])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cai trainer")
