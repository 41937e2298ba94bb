"""OpenAI's preference rows become the trainer's prompt/chosen/rejected rows, line for line,
with line-numbered errors (services/trainer/openai_compat/conversion.py)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.trainer.core.errors import Unprocessable
from services.trainer.openai_compat.conversion import (
    convert_line,
    converted,
    preference_to_pair,
)


def row(
    messages: list[dict[str, Any]], chosen: Any = "Hello!", rejected: Any = "Go away."
) -> dict[str, Any]:
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def test_a_single_user_message_is_the_prompt_as_it_is() -> None:
    pair = preference_to_pair(row([{"role": "user", "content": "Hi"}]))
    assert pair == {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}


def test_a_conversation_becomes_a_transcript_the_answer_continues() -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"},
    ]
    assert preference_to_pair(row(messages))["prompt"] == (
        "System: Be kind.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: How are you?\n\nAssistant: "
    )


def test_text_parts_are_joined_and_other_keys_kept_as_metadata() -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo!"}]
    source = row([{"role": "user", "content": "Hi"}], chosen=parts) | {"id": "r1"}
    source["input"]["tools"] = []
    assert preference_to_pair(source) == {
        "prompt": "Hi",
        "chosen": "Hello!",
        "rejected": "Go away.",
        "id": "r1",
    }


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (row([]), "`input.messages` must be a non-empty list"),
        (row([{"role": "assistant", "content": "x"}]), "last message of `input.messages`"),
        (row([{"role": "tool", "content": "x"}]), "input.messages[0].role must be one of"),
        (row([{"role": "user", "content": [{"type": "image_url"}]}]), "non-text part"),
        (
            row([{"role": "user", "content": "Hi"}], chosen=""),
            "preferred_output[0].content is empty",
        ),
        (row([{"role": "user", "content": "Hi"}], chosen="same", rejected="same"), "identical"),
        (row([{"role": "user", "content": "Hi"}]) | {"prompt": "x"}, "mixes OpenAI's keys"),
        ({"preferred_output": []}, "`input` must be an object"),
    ],
)
def test_a_row_that_cannot_train_says_why(source: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        preference_to_pair(source)


def test_tools_and_tool_calls_are_refused() -> None:
    source = row([{"role": "user", "content": "Hi"}])
    source["input"]["tools"] = [{"type": "function"}]
    with pytest.raises(ValueError, match=r"input\.tools"):
        preference_to_pair(source)
    source = row([{"role": "user", "content": "Hi"}])
    source["preferred_output"][0]["tool_calls"] = [{"id": "c"}]
    with pytest.raises(ValueError, match="tool use"):
        preference_to_pair(source)


def test_lines_that_are_not_openai_rows_pass_unchanged_for_the_upload_to_judge() -> None:
    native = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    for line in (b"", b"  ", b"{not json", b"[1, 2]", native, b"\xff\xfe"):
        assert convert_line(line, 1) == line


def test_a_bad_openai_row_names_its_line() -> None:
    with pytest.raises(Unprocessable, match=r"^line 7: `input\.messages`") as caught:
        convert_line(json.dumps(row([])).encode(), 7)
    assert caught.value.extra == {"line": 7}


async def test_conversion_keeps_the_lines_of_the_file_across_chunk_boundaries() -> None:
    first = json.dumps(row([{"role": "user", "content": "Hi"}])).encode()
    body = first + b"\n\n" + first + b"\n{bad"
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    out = b"".join([part async for part in converted(source())]).split(b"\n")
    assert len(out) == 4 and out[1] == b"" and out[3] == b"{bad"
    assert (
        json.loads(out[0])
        == json.loads(out[2])
        == {
            "prompt": "Hi",
            "chosen": "Hello!",
            "rejected": "Go away.",
        }
    )
