"""The door: what every request passes before a route reads its body.

FastAPI reads a route's body before it solves the route's dependencies, so on its own the
key check (api/deps.py) would come after a 100 MB job body had been read. This ASGI
middleware comes first:

1. the API key, on every route that depends on `require_api_key` (read from the route table,
   so a new route gets it too): 401 without reading a byte of the body;
2. the body's size: a `Content-Length` over the route's limit is a 413 at once; a body with
   no length is counted as it arrives, and the chunk that passes the limit ends the request
   with a 413 (nothing past it is read).

Limits: `CAI_TRAINER_MAX_REQUEST_BYTES` (default 1 MiB) on every route, except the dataset
upload, which has `CAI_TRAINER_MAX_UPLOAD_BYTES` plus the multipart framing (the route checks
the exact limit itself). Answers are the problem bodies of api/errors.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.trainer.api.deps import authorize, require_api_key
from services.trainer.api.errors import error_response
from services.trainer.core.errors import PayloadTooLarge, Unauthorized


@dataclass(frozen=True)
class BodyLimit:
    bytes: int
    detail: str
    """The 413's detail: the limit, and the setting that raises it."""


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when the body passes its limit. An HTTPException, because FastAPI
    turns any other error met while reading a body into a 400; the app's handler for it
    (api/errors.py) answers the problem body."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(status_code=413, detail=limit.detail)


def _leaves(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        branch = getattr(route, "original_router", None)
        if branch is not None:  # FastAPI 0.16x keeps an included router as a branch
            # Routes keep their router's prefix in their own path; a prefix given to
            # include_router would not be, and the matching below would miss them.
            assert not route.include_context.prefix, "include routers without a prefix"  # type: ignore[attr-defined]
            yield from _leaves(branch.routes)
        else:
            yield route


def _needs_key(route: BaseRoute) -> bool:
    if not isinstance(route, APIRoute):
        return False
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.call is require_api_key:
            return True
        pending.extend(dependency.dependencies)
    return False


@dataclass
class Door:
    app: ASGIApp
    default: BodyLimit
    routes: dict[tuple[str, str], BodyLimit] = field(default_factory=dict)
    """(method, path template) -> the limit of that route, where it is not the default."""
    _table: list[tuple[BaseRoute, bool]] | None = None

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, bool]:
        if self._table is None:
            router = scope["app"].router
            self._table = [(route, _needs_key(route)) for route in _leaves(router.routes)]
        for route, needs_key in self._table:
            if route.matches(scope)[0] == Match.FULL:
                return route, needs_key
        return None, False

    def _limit(self, scope: Scope, route: BaseRoute | None) -> BodyLimit:
        path = getattr(route, "path", None)
        return self.routes.get((scope["method"], str(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        route, needs_key = self._route(scope)
        if needs_key:
            try:
                await authorize(request)
            except Unauthorized as exc:
                await error_response(request, exc)(scope, receive, send)
                return
        limit = self._limit(scope, route)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit.bytes:
            await error_response(request, PayloadTooLarge(limit.detail))(scope, receive, send)
            return
        await self.app(scope, _counted(receive, limit), send)


def _counted(receive: Receive, limit: BodyLimit) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit.bytes:
                raise BodyTooLarge(limit)
        return message

    return counted
