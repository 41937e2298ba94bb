"""POST /v1/datasets (JSONL body or a multipart file), GET /v1/datasets/{id}.

curl -H 'Content-Type: application/jsonl' --data-binary @pairs.jsonl $URL/v1/datasets
curl -F file=@pairs.jsonl $URL/v1/datasets
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from protocol.datasets import DatasetRecord
from protocol.errors import Problem
from protocol.names import check_name
from services.trainer.api.deps import Authorized, State
from services.trainer.api.door import BodyLimit
from services.trainer.core.errors import BadRequest, NotFound, PayloadTooLarge
from services.trainer.datasets import ingest

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Authorized])

# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_SLACK = 64 * 1024

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/jsonl": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than the limit of {limit} bytes: split the dataset or raise "
        "CAI_TRAINER_MAX_UPLOAD_BYTES on the trainer"
    )


def upload_body_limit(limit: int) -> BodyLimit:
    """The door's limit for the upload route (api/door.py): the upload plus its multipart
    framing. The route enforces the exact limit itself, as below."""
    return BodyLimit(limit + MULTIPART_SLACK, _too_large(limit).detail)


def _limited(receive: Receive, limit: int) -> Receive:
    """Stop reading the request as soon as it passes `limit` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _file_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


@router.post(
    "",
    response_model=DatasetRecord,
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": DatasetRecord, "description": "The same bytes were uploaded before."},
        413: {"model": Problem},
        422: {"model": Problem},
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    state: State,
    name: Annotated[str | None, Query(description="Optional label for the dataset.")] = None,
) -> DatasetRecord:
    limit = state.settings.max_upload_bytes
    if name is not None:
        try:
            check_name(name)
        except ValueError as exc:
            raise BadRequest(f"query parameter `name`: {exc}") from None
    content_type = request.headers.get("content-type", "")
    multipart = content_type.startswith("multipart/form-data")
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > limit + (MULTIPART_SLACK if multipart else 0)
    ):
        raise _too_large(limit)
    if multipart:
        limited = Request(request.scope, _limited(request.receive, limit + MULTIPART_SLACK))
        form = await limited.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart upload without a `file` part: send the JSONL as `file`")
        chunks = _file_chunks(upload)
    else:
        chunks = request.stream()
    record, created = await ingest(
        chunks, layout=state.datasets, store=state.store, max_bytes=limit, name=name
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/datasets/{record.id}"
    return record


@router.get("/{dataset_id}", response_model=DatasetRecord, responses={404: {"model": Problem}})
def get_dataset(dataset_id: str, state: State) -> DatasetRecord:
    state.datasets.path(dataset_id)  # 404 naming the id format for malformed ids
    record = state.store.get_dataset(dataset_id)
    if record is None:
        raise NotFound(f"unknown dataset {dataset_id!r}: upload it with POST /v1/datasets")
    return record
