"""The one place errors become `application/problem+json` (protocol.errors.Problem).

Typed TrainerErrors keep their status and message; request validation errors name each
field and what to fix, with the field's allowed range where it has one (malformed JSON is a
400, other validation 422; Infinity and NaN are a 422 like any other bad number); unknown
routes 404, wrong methods 405; anything else a 500 that says where to look, never a stack trace.
On the OpenAI-compatible routes the same answers come in OpenAI's error body
(openai_compat/errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, get_args

import annotated_types
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from protocol.errors import PROBLEM_CONTENT_TYPE, Problem
from services.trainer.core.errors import PayloadTooLarge, TrainerError
from services.trainer.openai_compat.errors import is_openai_path, openai_error_response

logger = logging.getLogger(__name__)

# Tags of the JobSpec union: pydantic puts them in the error location; callers never wrote them.
_UNION_TAGS = {"dpo", "merge"}


def problem_response(
    status: int,
    detail: str,
    request: Request,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    if is_openai_path(request.url.path):
        return openai_error_response(status, detail, headers, extra)
    body = Problem(
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        **extra,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _field(loc: tuple[Any, ...]) -> tuple[str, str]:
    where = str(loc[0]) if loc else "body"
    rest = list(loc[1:])
    if where == "body" and len(rest) > 1 and rest[0] in _UNION_TAGS:
        rest = rest[1:]
    return where, ".".join(str(part) for part in rest)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models a field's type can hold (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models(arg)


def field_info(request: Request, loc: tuple[Any, ...]) -> FieldInfo | None:
    """The declaration of the body field an error is about (None for other inputs)."""
    body = getattr(request.scope.get("route"), "body_field", None)
    if body is None or not loc or loc[0] != "body":
        return None
    path = list(loc[1:])
    if len(path) > 1 and path[0] in _UNION_TAGS:
        path = path[1:]
    for model in _models(body.field_info.annotation):
        info: FieldInfo | None = None
        types = [model]
        for part in path:
            if isinstance(part, int):
                continue  # an item of a list: its type is already in `types`
            info = next((m.model_fields[part] for m in types if part in m.model_fields), None)
            if info is None:
                break
            types = list(_models(info.annotation))
        if info is not None:
            return info
    return None


_BOUND_WORDS = (
    (annotated_types.Gt, "gt", "more than"),
    (annotated_types.Ge, "ge", "at least"),
    (annotated_types.Lt, "lt", "less than"),
    (annotated_types.Le, "le", "at most"),
)


def allowed_range(info: FieldInfo | None) -> str:
    """`at least 0 and at most 4294967295`: a numeric field's bounds, in words ('' if none)."""
    words = []
    for constraint in info.metadata if info is not None else ():
        for kind, attr, word in _BOUND_WORDS:
            if isinstance(constraint, kind):
                words.append(f"{word} {getattr(constraint, attr)!r}")
    return " and ".join(words)


def describe_validation_error(
    err: dict[str, Any], allowed: str = ""
) -> tuple[str, dict[str, object]]:
    """One error as a sentence for `detail`, and as an item of `errors`. `allowed` is the
    field's range, named in both where the field has one."""
    where, field = _field(tuple(err.get("loc", ())))
    kind = str(err.get("type", ""))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    label = f"`{field}`" if field else ("the body" if where == "body" else f"the {where}")
    if kind == "json_invalid":
        field = ""
        reason = (err.get("ctx") or {}).get("error", msg)
        text = f"the body is not valid JSON ({reason}): send one JSON object"
    elif kind == "missing":
        text = f"{label} is required ({where}): add it"
    elif kind == "extra_forbidden":
        text = f"{label} is not a known field: remove it or check its spelling (see /docs)"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        text = "`kind` must be 'dpo' or 'merge': set it to say which job to run"
    else:
        shown = ""
        if "input" in err and not isinstance(err["input"], dict | list):
            shown = f" (got {_short(err['input'])})"
        if kind == "finite_number":
            msg = "Infinity and NaN are not accepted: send a finite number"
        text = f"{label}: {msg}{shown}"
    item: dict[str, object] = {"in": where, "field": field, "type": kind, "message": msg}
    if allowed:
        text += f"; allowed: {allowed}"
        item["allowed"] = allowed
    return text, item


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route that matched the path; ask every route per method.
    methods = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = dict(request.scope) | {"method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return ", ".join(methods)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare in the OpenAPI schema the problem answers every operation can give, as
    `application/problem+json` (FastAPI would list them as `application/json`, and its
    default 422 body is not what the handlers below send): 500 everywhere, 401 where the key
    applies, 400 and 422 where there are inputs, 404 where the path names something."""
    ref = {"$ref": "#/components/schemas/Problem"}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            codes = {"500"} | {code for code in responses if code[:1] in ("4", "5")}
            if operation.get("security"):
                codes.add("401")
            if operation.get("parameters") or operation.get("requestBody"):
                codes |= {"400", "422"}
            if "{" in path:
                codes.add("404")
            for code in codes:
                described = responses.get(code, {}).get("description")
                responses[code] = {
                    "description": described or HTTPStatus(int(code)).phrase,
                    "content": {PROBLEM_CONTENT_TYPE: {"schema": ref}},
                }
    return schema


def error_response(request: Request, exc: TrainerError) -> JSONResponse:
    """The answer to a typed error, from a route or from the door (api/door.py)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return problem_response(
        exc.status, exc.detail, request, title=exc.title, headers=headers, **exc.extra
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TrainerError)
    async def _trainer_error(request: Request, exc: TrainerError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        described = [
            describe_validation_error(
                dict(err), allowed_range(field_info(request, tuple(err.get("loc", ()))))
            )
            for err in exc.errors()
        ]
        malformed = any(item["type"] == "json_invalid" for _, item in described)
        texts = [text for text, _ in described]
        detail = "; ".join(texts[:5]) + (f"; and {len(texts) - 5} more" if len(texts) > 5 else "")
        return problem_response(
            400 if malformed else 422,
            detail,
            request,
            errors=[item for _, item in described],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}: see /docs for the API"
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body that is not even text (bytes that are not UTF-8).
            detail = "the body could not be read: send one JSON object, encoded as UTF-8"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers = dict(exc.headers or {}) | {"Allow": allowed}
            detail = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
            return problem_response(405, detail, request, headers=headers)
        else:
            detail = str(exc.detail)
        # RFC 9110's name for 413 (Python < 3.13 still says "Request Entity Too Large").
        title = PayloadTooLarge.title if exc.status_code == 413 else None
        return problem_response(
            exc.status_code, detail, request, title=title, headers=dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "the trainer hit an internal error; its log has the details. "
            "Retrying may help; report it if it repeats",
            request,
        )
