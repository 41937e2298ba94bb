"""The dashboard: a read-only page at `/` listing jobs with live progress (each running job's
event stream) and the adapter registry with lineage. Static files in services/trainer/dashboard/;
the page reads the same JSON API as the client (`/v1/jobs`, `/v1/jobs/{id}/events`,
`/v1/adapters`, `/health`).

    open http://127.0.0.1:8100/          # no key configured: the page opens directly

Auth is the API's. With `CAI_TRAINER_API_KEY` set, `GET /` answers 401 without the key: as
`application/problem+json` to API clients, and as the sign-in form to browsers (requests that
accept `text/html`), whose navigations cannot carry a bearer header. The form posts the key
to `POST /login` (a request body, so the key is never in a URL or an access log), which sets
the session cookie that api/deps.py accepts on GET routes and redirects to `/`. `GET /login`
(the form) and `POST /logout` (clears the cookie) are the only routes besides `/health` that
need no key: neither reveals nor changes anything. Every answer carries a strict
Content-Security-Policy: the page runs only its own script and talks only to this server.
"""

from __future__ import annotations

import hmac
import logging
from html import escape
from importlib.resources import files
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Security
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.trainer.api.deps import (
    SESSION_COOKIE,
    Authorized,
    State,
    require_api_key,
    session_token,
)
from services.trainer.core.errors import BadRequest, NotFound, Unauthorized

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dashboard"], include_in_schema=False)

_bearer = HTTPBearer(auto_error=False)
_STATIC = files("services.trainer.dashboard")
# Served by name from a fixed table: no path from the request ever reaches the file system.
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# A key is a line of text; a form body far larger than that is not a login.
MAX_LOGIN_BODY = 4096
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The sign-in form has no script and one inline style sheet; it may post only to this server.
_LOGIN_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _login_page(status: int, message: str = "") -> HTMLResponse:
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = _static("login.html").replace("<!--MESSAGE-->", note)
    headers = _NO_STORE | {"Content-Security-Policy": _LOGIN_CSP}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return HTMLResponse(body, status_code=status, headers=headers)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Response:
    try:
        require_api_key(request, state, credentials)
    except Unauthorized:
        if not _wants_html(request):
            raise
        return _login_page(401)
    headers = _NO_STORE | {"Content-Security-Policy": _PAGE_CSP}
    return HTMLResponse(_static("index.html"), headers=headers)


@router.get("/dashboard/{asset}", dependencies=[Authorized])
def asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise NotFound(f"no dashboard file {asset[:64]!r}: the page is at /")
    return Response(_static(asset), media_type=media_type, headers=_NO_STORE)


@router.get("/login", response_class=HTMLResponse)
def login_form(state: State) -> Response:
    if state.settings.api_key is None:
        return RedirectResponse("/", status_code=303)
    return _login_page(200)


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Form field `key`: the trainer's CAI_TRAINER_API_KEY. Right: the session cookie and a
    redirect to `/`. Wrong: 401 and the form again; no cookie."""
    expected = state.settings.api_key
    if expected is None:
        return RedirectResponse("/", status_code=303)
    body = b""
    async for chunk in request.stream():  # bounded: an endless body is not read to its end
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            raise BadRequest(f"the sign-in form is over {MAX_LOGIN_BODY} bytes: send only `key`")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("send the sign-in form as `key=<the trainer's API key>`") from exc
    given = (fields.get("key") or [""])[0]
    secret = expected.get_secret_value()
    if not hmac.compare_digest(given.encode(), secret.encode()):
        client = request.client.host if request.client else "?"
        logger.warning("dashboard sign-in refused (wrong key) from %s", client)
        return _login_page(401, "That key is not this trainer's CAI_TRAINER_API_KEY.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token(secret),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
