"""Named dependencies of the routes: the app's state and the key check.

The key comes as `Authorization: Bearer <key>`, or, for the dashboard in a browser (which
cannot put a header on a navigation or an EventSource), as the session cookie that
`POST /login` sets: a value derived from the key (never the key itself), HttpOnly and
SameSite=Strict, accepted only on GET/HEAD so a cookie can read but never change anything."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.trainer.core.errors import Unauthorized
from services.trainer.state import TrainerState

_bearer = HTTPBearer(auto_error=False, description="The trainer's CAI_TRAINER_API_KEY.")

SESSION_COOKIE = "cai_trainer_session"
_SAFE_METHODS = ("GET", "HEAD")


def session_token(key: str) -> str:
    """The dashboard cookie's value: an HMAC of a fixed label under the key, so the cookie
    opens the read-only routes while the key itself never sits in the browser."""
    return hmac.new(key.encode(), b"cai-trainer-dashboard-session-v1", hashlib.sha256).hexdigest()


def get_state(request: Request) -> TrainerState:
    state: TrainerState = request.app.state.trainer
    return state


State = Annotated[TrainerState, Depends(get_state)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with the same key and body return the same job.",
    ),
]


def require_api_key(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Every route but /health (and the dashboard's login form) depends on this.
    Constant-time comparison; the key given is never logged or echoed."""
    expected = state.settings.api_key
    if expected is None:
        return
    cookie = request.cookies.get(SESSION_COOKIE)
    if credentials is None and cookie is not None and request.method in _SAFE_METHODS:
        token = session_token(expected.get_secret_value())
        if hmac.compare_digest(cookie.encode(), token.encode()):
            return
    given = credentials.credentials if credentials is not None else ""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(
            "this trainer needs an API key: send `Authorization: Bearer <key>` "
            "(the client reads CAI_TRAINER_API_KEY)"
        )
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized(
            "the API key is wrong: send `Authorization: Bearer <key>` with the trainer's CAI_TRAINER_API_KEY"
        )


Authorized = Depends(require_api_key)


async def authorize(request: Request) -> None:
    """`require_api_key` outside FastAPI's dependency solving: the door (api/door.py) runs it
    before a route reads the body, which FastAPI does before it solves the dependencies."""
    require_api_key(request, get_state(request), await _bearer(request))
