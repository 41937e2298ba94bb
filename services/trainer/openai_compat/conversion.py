"""OpenAI's preference rows -> the trainer's prompt/chosen/rejected rows.

    {"input": {"messages": [{"role": "user", "content": "Hi"}]},
     "preferred_output": [{"role": "assistant", "content": "Hello!"}],
     "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
    -> {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}

The trainer trains base models on plain text (no chat template), so the input becomes text:
a single user message is the prompt as it is (how the pipeline's own rows look); a longer
conversation is a transcript, `System: ...`, `User: ...`, `Assistant: ...` turns joined by
blank lines, ending with `Assistant: ` for the answer to continue. Text content parts are
joined; images, audio, tools and tool calls have no text form and are refused.

Conversion is line for line: blank lines stay blank and lines that are not OpenAI rows
(rows already in the trainer's format, or lines that are not JSON) pass unchanged, so the
upload's one validation (services/trainer/datasets.py) numbers its errors by the lines of
the file the caller sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from services.trainer.core.errors import Unprocessable

OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
NATIVE_KEYS = ("prompt", "chosen", "rejected")
_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
_EXAMPLE = (
    '{"input": {"messages": [{"role": "user", "content": ...}]}, "preferred_output": '
    '[{"role": "assistant", "content": ...}], "non_preferred_output": [...]}'
)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ValueError(f"{where} holds a non-text part: only text content trains here")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where} has a text part without a `text` string")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"{where} must be a string or a list of text parts")


def _message(message: Any, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object with `role` and `content`")
    for key in ("tool_calls", "function_call", "audio"):
        if message.get(key):
            raise ValueError(f"{where} has `{key}`: tool use has no plain-text form here")
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(_ROLES)} (got {role!r:.40})")
    return str(role), _text(message.get("content"), f"{where}.content")


def _output(row: dict[str, Any], key: str) -> str:
    messages = row.get(key)
    if not isinstance(messages, list) or len(messages) != 1:
        raise ValueError(f"`{key}` must be a list of exactly one assistant message")
    role, text = _message(messages[0], f"{key}[0]")
    if role != "assistant":
        raise ValueError(f"{key}[0].role must be assistant (got {role!r})")
    if not text:
        raise ValueError(f"{key}[0].content is empty")
    return text


def render_prompt(messages: list[tuple[str, str]]) -> str:
    """The prompt text of an input conversation (see the module's docstring)."""
    if len(messages) == 1:
        return messages[0][1]
    turns = [f"{_ROLES[role]}: {text}" for role, text in messages]
    return "\n\n".join([*turns, "Assistant: "])


def preference_to_pair(row: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI preference row as a trainer row; other top-level keys are kept as the
    row's metadata. ValueError saying what is wrong."""
    clash = [key for key in NATIVE_KEYS if key in row]
    if clash:
        raise ValueError(
            f"the row mixes OpenAI's keys with the trainer's {clash}: write one format per row"
        )
    source = row.get("input")
    if not isinstance(source, dict):
        raise ValueError("`input` must be an object with `messages`")
    if source.get("tools"):
        raise ValueError("`input.tools` is not empty: tool definitions cannot train here")
    raw = source.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("`input.messages` must be a non-empty list of messages")
    messages = [_message(m, f"input.messages[{i}]") for i, m in enumerate(raw)]
    if messages[-1][0] != "user":
        raise ValueError("the last message of `input.messages` must be the user's")
    if not any(text for _, text in messages):
        raise ValueError("`input.messages` has no text")
    chosen = _output(row, "preferred_output")
    rejected = _output(row, "non_preferred_output")
    if chosen == rejected:
        raise ValueError("`preferred_output` and `non_preferred_output` are identical")
    kept = {key: value for key, value in row.items() if key not in OPENAI_KEYS}
    return {"prompt": render_prompt(messages), "chosen": chosen, "rejected": rejected} | kept


def convert_line(raw: bytes, number: int) -> bytes:
    """A line of an uploaded file as the trainer stores it (without its line ending)."""
    if not raw.strip():
        return raw
    try:
        row = json.loads(raw)
    except ValueError:
        return raw  # not JSON (or not UTF-8): the upload's validation says so, by line
    if not isinstance(row, dict) or not any(key in row for key in OPENAI_KEYS):
        return raw
    try:
        pair = preference_to_pair(row)
    except ValueError as exc:
        raise Unprocessable(
            f"line {number}: {exc} (an OpenAI preference row looks like {_EXAMPLE})",
            line=number,
        ) from None
    return json.dumps(pair, ensure_ascii=False).encode()


async def converted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The uploaded bytes, converted line by line; line endings kept."""
    buffer = bytearray()
    number = 0
    async for chunk in chunks:
        scanned = len(buffer)  # a long line spans chunks: search only the new bytes
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, scanned))) >= 0:
            number += 1
            yield convert_line(bytes(buffer[start:end]), number) + b"\n"
            start = end + 1
        del buffer[:start]
    if buffer:
        yield convert_line(bytes(buffer), number + 1)
