"""OpenAI's Files API over the trainer's datasets (services/trainer/openai_compat/).

client.files.create(file=open("prefs.jsonl", "rb"), purpose="fine-tune")
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from services.trainer.api.deps import Authorized
from services.trainer.openai_compat.handler import Handler
from services.trainer.openai_compat.models import FileObject, OpenAIError, Page

router = APIRouter(prefix="/v1/files", tags=["openai files"], dependencies=[Authorized])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": OpenAIError} for code in (400, 404, 413, 415)
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                    "required": ["file", "purpose"],
                }
            }
        },
    }
}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
async def create_file(request: Request, handler: Handler) -> FileObject:
    """JSONL of OpenAI preference rows, or of the trainer's prompt/chosen/rejected rows."""
    return await handler.upload_file(request)


@router.get("", response_model=Page[FileObject], responses=_ERRORS)
def list_files(
    handler: Handler,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[FileObject]:
    return handler.list_files(after, limit, order, purpose)


@router.get("/{file_id}", response_model=FileObject, responses=_ERRORS)
def retrieve_file(file_id: str, handler: Handler) -> FileObject:
    return handler.get_file(file_id)
