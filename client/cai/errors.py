"""The shape both HTTP clients' exception trees share (cai.generator.errors, cai.trainer.errors).

    ServiceError                  base of what a service client raises
    ├── ServiceConnectionError    the service could not be reached (`url`)
    │   └── ServiceTimeout        connected, but no answer in time
    ├── ServiceStatusError        an error status (`url`, `status_code`, `server_message`)
    └── ServiceResponseError      a 2xx answer whose body is not what the service sends

Each client's tree derives from these (`GeneratorTimeout` is a `GeneratorConnectionError` and a
`ServiceTimeout`), so a caller that talks to both services can catch one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

S = TypeVar("S", bound="ServiceStatusError")


class ServiceError(Exception):
    """Base class of everything a service client raises."""


class ServiceConnectionError(ServiceError):
    """The service at `url` could not be reached (refused, reset, DNS, ...)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ServiceTimeout(ServiceConnectionError):
    """The service at `url` did not answer within the client's timeout."""


class ServiceStatusError(ServiceError):
    """The service answered `status_code`; `server_message` is its own explanation."""

    def __init__(self, message: str, *, url: str, status_code: int, server_message: str) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code
        self.server_message = server_message


class ServiceResponseError(ServiceError):
    """A successful status with a body the client cannot read."""


def status_class(
    by_status: Mapping[int, type[S]],
    status: int,
    *,
    server: type[S],
    client: type[S],
    other: type[S],
) -> type[S]:
    """The exception class for `status`: from `by_status`, else `server` for 5xx, `client` for
    another 4xx and `other` for anything else."""
    if status in by_status:
        return by_status[status]
    if status >= 500:
        return server
    if 400 <= status < 500:
        return client
    return other
