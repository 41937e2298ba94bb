"""OpenAI's error body on the OpenAI-compatible routes, so the SDK raises its typed errors
(BadRequestError, AuthenticationError, NotFoundError, ...) with the trainer's message.

Every error of the trainer still goes through api/errors.py's one `problem_response`; for a
path under OPENAI_PREFIXES it answers through `openai_error_response` instead: the same
status and message, as `{"error": {"message", "type", "param", "code"}}`. Two differences:
a 422 (well-formed but not acceptable: bad rows, a job the checks refuse) is a 400, as
OpenAI answers it, and 4xx answers say `x-should-retry: false`, since the SDK would
otherwise retry a 409 that no retry can fix.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from services.trainer.openai_compat.models import OpenAIError, OpenAIErrorBody

OPENAI_PREFIXES = ("/v1/files", "/v1/fine_tuning")

_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def is_openai_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_PREFIXES)


def openai_status(status: int) -> int:
    return 400 if status == 422 else status


def _param(extra: dict[str, Any]) -> str | None:
    """The parameter at fault: the one a typed error names, else the first invalid field."""
    if extra.get("field"):
        return str(extra["field"])
    if "line" in extra:
        return "file"  # a bad row of the uploaded file
    for item in extra.get("errors") or ():
        if isinstance(item, dict) and item.get("field"):
            return str(item["field"])
    return None


def openai_error_response(
    status: int, detail: str, headers: dict[str, str] | None, extra: dict[str, Any]
) -> JSONResponse:
    status = openai_status(status)
    body = OpenAIError(
        error=OpenAIErrorBody(
            message=detail,
            type="server_error" if status >= 500 else "invalid_request_error",
            param=_param(extra),
            code=_CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_")),
        )
    )
    if 400 <= status < 500:
        headers = dict(headers or {}) | {"x-should-retry": "false"}
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def document_openai_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the error answers api/errors.py documented as problem bodies, on the OpenAI
    paths, as what they are: OpenAI error bodies, 400 in place of 422."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in (("OpenAIError", OpenAIError), ("OpenAIErrorBody", OpenAIErrorBody)):
        components.setdefault(
            name, model.model_json_schema(ref_template="#/components/schemas/{model}")
        )
    components["OpenAIError"].pop("$defs", None)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    for path, item in schema.get("paths", {}).items():
        if not is_openai_path(path):
            continue
        for operation in item.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses.setdefault("400", responses.pop("422"))
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    response["content"] = content
                    if code[:1] == "4":
                        response["headers"] = {"x-should-retry": {"schema": {"type": "string"}}}
    return schema
