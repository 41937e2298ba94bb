"""Named dependencies of the routes: the app's state and the bearer-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.trainer.core.errors import Unauthorized
from services.trainer.state import TrainerState

_bearer = HTTPBearer(auto_error=False, description="The trainer's CAI_TRAINER_API_KEY.")


def get_state(request: Request) -> TrainerState:
    state: TrainerState = request.app.state.trainer
    return state


State = Annotated[TrainerState, Depends(get_state)]


def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Every route but /health depends on this. Constant-time comparison; the key given
    is never logged or echoed."""
    expected = state.settings.api_key
    if expected is None:
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
