"""Errors raised by the trainer client. Status errors carry the server's problem+json body
(`problem`) and its `detail`, which says what to fix.

    TrainerError
    ├── TrainerConnectionError     the trainer could not be reached (names the URL)
    │   └── TrainerTimeout         connected, but no answer in time
    ├── TrainerStatusError         the trainer answered with an error status
    │   ├── TrainerBadRequest      400 / 422: the request was wrong; `problem.errors` per field
    │   ├── TrainerAuthError       401 / 403: missing or wrong API key
    │   ├── TrainerNotFound        404: unknown job, dataset or adapter
    │   ├── TrainerConflict        409: name taken, or an Idempotency-Key reused for another body
    │   ├── TrainerPayloadTooLarge 413: the upload is over the trainer's size limit
    │   └── TrainerServerError     5xx (retried)
    ├── TrainerResponseError       a 2xx answer whose body is not what the trainer sends
    └── JobNotSucceeded            `wait_for_job`: the job ended failed or cancelled

Connection errors and 5xx are retried where the request is safe to repeat (reads, uploads,
and job submits, which always carry an Idempotency-Key) before they are raised. The tree has
the shape of cai.errors: each class here is also its Service* counterpart.
"""

from __future__ import annotations

from cai import errors as service
from protocol.errors import Problem
from protocol.jobs import JobRecord


class TrainerError(service.ServiceError):
    """Base class of everything the trainer client raises."""


class TrainerConnectionError(TrainerError, service.ServiceConnectionError):
    """The trainer at `url` could not be reached (refused, reset, DNS, ...)."""


class TrainerTimeout(TrainerConnectionError, service.ServiceTimeout):
    """The trainer at `url` did not answer within the client's timeout."""


class TrainerStatusError(TrainerError, service.ServiceStatusError):
    """The trainer answered `status_code`; `detail` (also `server_message`) is its
    explanation, `problem` its problem+json body."""

    def __init__(
        self, message: str, *, url: str, status_code: int, detail: str, problem: Problem | None
    ) -> None:
        super().__init__(message, url=url, status_code=status_code, server_message=detail)
        self.detail = detail
        self.problem = problem


class TrainerBadRequest(TrainerStatusError):
    """400 or 422: fix the request (the detail and `problem.errors` say which field)."""


class TrainerAuthError(TrainerStatusError):
    """401 or 403: pass the trainer's API key (`--api-key` / CAI_TRAINER_API_KEY)."""


class TrainerNotFound(TrainerStatusError):
    """404: the job, dataset, adapter or route does not exist on this trainer."""


class TrainerConflict(TrainerStatusError):
    """409: the output name is taken, or the Idempotency-Key was used for another body."""


class TrainerPayloadTooLarge(TrainerStatusError):
    """413: the dataset is over the trainer's CAI_TRAINER_MAX_UPLOAD_BYTES."""


class TrainerServerError(TrainerStatusError):
    """5xx: the trainer failed; its log has the details."""


class TrainerResponseError(TrainerError, service.ServiceResponseError):
    """A 2xx answer the client cannot read (not JSON, or not the expected schema)."""


class JobNotSucceeded(TrainerError):
    """The job ended `failed` or `cancelled`; `job.error` says why."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(f"job {job.id} ended {job.state.value}: {job.error or 'no reason given'}")
        self.job = job


_BY_STATUS: dict[int, type[TrainerStatusError]] = {
    400: TrainerBadRequest,
    401: TrainerAuthError,
    403: TrainerAuthError,
    404: TrainerNotFound,
    409: TrainerConflict,
    413: TrainerPayloadTooLarge,
    422: TrainerBadRequest,
}


def status_error_class(status: int) -> type[TrainerStatusError]:
    """The exception class for an HTTP error status."""
    return service.status_class(
        _BY_STATUS,
        status,
        server=TrainerServerError,
        client=TrainerStatusError,
        other=TrainerStatusError,
    )
