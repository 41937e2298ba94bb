"""Typed errors of the trainer. Each becomes one `application/problem+json` answer.

    TrainerError (500)
    ├── BadRequest (400)            the request body cannot be read (bad JSON, bad bytes)
    ├── Unauthorized (401)          missing or wrong bearer key
    ├── NotFound (404)              unknown job, dataset, adapter or model
    ├── Conflict (409)              name taken, idempotency key reused with another body
    ├── PayloadTooLarge (413)       a body over its route's limit (`max_upload_bytes`, `max_request_bytes`)
    ├── UnsupportedMediaType (415)  neither JSONL nor multipart
    └── Unprocessable (422)         well-formed but not acceptable (bad rows, 4-bit on CPU, ...)

The message (`detail`) is written for the caller: what was wrong and what to change. It never
holds a stack trace or a secret.
"""

from __future__ import annotations

from typing import Any


class TrainerError(Exception):
    status = 500
    title = "Internal Server Error"
    type = "about:blank"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(TrainerError):
    status = 400
    title = "Bad Request"


class Unauthorized(TrainerError):
    status = 401
    title = "Unauthorized"


class NotFound(TrainerError):
    status = 404
    title = "Not Found"


class Conflict(TrainerError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(TrainerError):
    status = 413
    title = "Content Too Large"


class UnsupportedMediaType(TrainerError):
    status = 415
    title = "Unsupported Media Type"


class Unprocessable(TrainerError):
    status = 422
    title = "Unprocessable Content"
