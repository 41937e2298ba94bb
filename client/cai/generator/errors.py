"""Errors raised by the generator client and by `publish`.

Every error carries a message that says what went wrong and what to change; errors from
the server also carry the server's own message (vLLM answers `{"error": {"message",
"type", "code", "param"}}`).

    GeneratorError
    ├── GeneratorConnectionError   the server could not be reached (names the URL)
    │   └── GeneratorTimeout       connected, but no answer in time
    ├── GeneratorStatusError       the server answered with an error status
    │   ├── GeneratorBadRequest    400 / 422: the request was wrong (not retried)
    │   ├── GeneratorAuthError     401 / 403: missing or wrong API key
    │   ├── GeneratorNotFound      404: unknown model or adapter
    │   ├── GeneratorRateLimited   429 (retried)
    │   └── GeneratorServerError   5xx (retried, except adapter loads)
    ├── GeneratorResponseError     a 2xx answer whose body is not what vLLM sends
    └── PublishError               an adapter could not be published
        ├── AdapterInvalid         local checks failed; the server was not touched
        │   ├── AdapterRankTooHigh     rank r above the server's --max-lora-rank
        │   └── AdapterNameTaken       the name is already served
        ├── AdapterNotListed       loaded, but /v1/models does not list it with the base as parent
        └── AdapterProbeFailed     loaded, but it does not change the base's outputs

Transport failures and 429/5xx are retried by the client before they are raised; the
exception raised is the last one seen. The tree has the shape of cai.errors: each class here
is also its Service* counterpart (a GeneratorTimeout is a ServiceTimeout).
"""

from __future__ import annotations

from typing import Any

from cai import errors as service


class GeneratorError(service.ServiceError):
    """Base class of everything the generator client raises."""


class GeneratorConnectionError(GeneratorError, service.ServiceConnectionError):
    """The generator at `url` could not be reached (refused, reset, DNS, ...)."""


class GeneratorTimeout(GeneratorConnectionError, service.ServiceTimeout):
    """The generator at `url` did not answer within the client's timeout."""


class GeneratorStatusError(GeneratorError, service.ServiceStatusError):
    """The server answered `status_code`; `server_message` is its own explanation, `error_type`
    vLLM's error type and `body` the whole answer."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status_code: int,
        server_message: str,
        error_type: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, url=url, status_code=status_code, server_message=server_message)
        self.error_type = error_type
        self.body = body


class GeneratorBadRequest(GeneratorStatusError):
    """400 or 422: fix the request (parameters, model name, prompt length)."""


class GeneratorAuthError(GeneratorStatusError):
    """401 or 403: pass the generator's API key (`--api-key` / `CAI_GENERATOR_API_KEY`)."""


class GeneratorNotFound(GeneratorStatusError):
    """404: the model, adapter or endpoint does not exist on this server."""


class GeneratorRateLimited(GeneratorStatusError):
    """429: the server is overloaded; retried with backoff before this is raised."""


class GeneratorServerError(GeneratorStatusError):
    """5xx: the server failed; retried with backoff before this is raised."""


class GeneratorResponseError(GeneratorError, service.ServiceResponseError):
    """A successful status with a body that does not parse as vLLM's answer."""


class PublishError(GeneratorError):
    """An adapter could not be published."""


class AdapterInvalid(PublishError):
    """The adapter failed a local check; nothing was sent to the server."""


class AdapterRankTooHigh(AdapterInvalid):
    """The adapter's LoRA rank is above the server's --max-lora-rank."""


class AdapterNameTaken(AdapterInvalid):
    """An adapter (or the base) is already served under that name; use a new version name."""


class AdapterNotListed(PublishError):
    """The load succeeded but /v1/models does not list the adapter under the expected parent."""


class AdapterProbeFailed(PublishError):
    """The loaded adapter produced the same output as the base; it was unloaded again."""


_BY_STATUS: dict[int, type[GeneratorStatusError]] = {
    400: GeneratorBadRequest,
    401: GeneratorAuthError,
    403: GeneratorAuthError,
    404: GeneratorNotFound,
    422: GeneratorBadRequest,
    429: GeneratorRateLimited,
}


def status_error_class(status_code: int) -> type[GeneratorStatusError]:
    """The exception class for an HTTP error status."""
    return service.status_class(
        _BY_STATUS,
        status_code,
        server=GeneratorServerError,
        client=GeneratorBadRequest,
        other=GeneratorStatusError,
    )
