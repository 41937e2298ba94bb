"""The instructions file (`instructions.source: file`): checked whole, before anything runs.

Issue 13, class 6: a bad line is one `InstructionFileError` naming the file and the line;
a UTF-8 byte-order mark is accepted.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from cai.pipeline.instructions import InstructionFileError, read_instruction_file

GOOD = [
    {"type": "qa", "text": "Why is the sky blue?"},
    {"type": "generation", "text": "Write a haiku about rain.", "id": "mine-1"},
]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def good_lines() -> list[bytes]:
    return [json.dumps(row).encode() for row in GOOD]


def test_a_good_file_gives_id_type_and_text_per_line(tmp_path: Path) -> None:
    rows = read_instruction_file(write(tmp_path / "i.jsonl", good_lines()))
    assert rows == [
        (None, "qa", "Why is the sky blue?"),
        ("mine-1", "generation", "Write a haiku about rain."),
    ]


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    plain = read_instruction_file(write(tmp_path / "plain.jsonl", good_lines()))
    lines = good_lines()
    lines[0] = codecs.BOM_UTF8 + lines[0]
    assert read_instruction_file(write(tmp_path / "bom.jsonl", lines)) == plain


def test_blank_lines_and_crlf_endings_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "i.jsonl"
    path.write_bytes(b"\r\n".join([good_lines()[0], b"", b"  ", good_lines()[1]]) + b"\r\n")
    assert len(read_instruction_file(path)) == 2


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (b"this is not json", "not JSON"),
        (b'{"type": "qa", "text": "unterminated', "not JSON"),
        (b'["qa", "a list"]', "`type` and `text`"),
        (b'"just a string"', "`type` and `text`"),
        (b'{"type": "qa"}', "`type` and `text`"),
        (b'{"type": "essay", "text": "Write an essay."}', "'essay' is not one of"),
        (b'{"type": "qa", "text": "   "}', "non-empty string"),
        (b'{"type": "qa", "text": 42}', "non-empty string"),
        (b'{"type": "qa", "text": "Fine text", "id": 7}', "`id` must be"),
        (b'{"type": "qa", "text": "Fine text", "id": ""}', "`id` must be"),
        (b'{"type": "qa", "text": "Caf\xe9 au lait?"}', "not UTF-8 (byte 0xe9 at column 28)"),
        (b"\xff\xfe{\x00", "not UTF-8"),
    ],
)
def test_a_bad_line_is_refused_with_file_and_line(tmp_path: Path, bad: bytes, says: str) -> None:
    path = write(tmp_path / "i.jsonl", [*good_lines(), bad, good_lines()[0]])
    with pytest.raises(InstructionFileError) as info:
        read_instruction_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and says in message and "\n" not in message


def test_a_repeated_id_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "i.jsonl", [*good_lines(), good_lines()[1]])
    with pytest.raises(InstructionFileError, match=r":3: id 'mine-1' is already used on line 2"):
        read_instruction_file(path)


@pytest.mark.parametrize("content", [b"", b"\n\n", codecs.BOM_UTF8])
def test_a_file_without_instructions_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "i.jsonl"
    path.write_bytes(content)
    with pytest.raises(InstructionFileError, match="no instructions"):
        read_instruction_file(path)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InstructionFileError, match=r"cannot read instructions file .*nope"):
        read_instruction_file(tmp_path / "nope.jsonl")
