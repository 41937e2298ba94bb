"""The run folder's one atomic writer and its readers.

.venv/bin/pytest tests/unit/test_runfolder.py -q
"""

from __future__ import annotations

import stat

import pytest

from cai.runfolder import (
    atomic_file,
    read_json,
    read_jsonl,
    stage_folder,
    step_path,
    write_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "manifest.json"
    write_atomic(path, "old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_written_files_are_readable_by_others(tmp_path):
    path = tmp_path / "report.html"
    write_atomic(path, "<html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_is_indented_with_sorted_keys(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"b": 1, "a": [2]})
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert read_json(path) == {"a": [2], "b": 1}


def test_jsonl_rows_are_compact_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    assert write_jsonl_atomic(path, [{"a": "é"}, {"b": 2}]) == 2
    assert path.read_text(encoding="utf-8") == '{"a":"é"}\n{"b":2}\n'


def test_read_jsonl_skips_a_torn_tail_and_bad_lines(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n{"c": ')
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_json_of_a_missing_or_broken_file_is_empty(tmp_path):
    (tmp_path / "broken.json").write_text('{"a": ')
    assert read_json(tmp_path / "broken.json") == {}
    assert read_json(tmp_path / "missing.json") == {}


def test_layout(tmp_path):
    assert stage_folder(tmp_path, 2) == tmp_path / "stages" / "2"
    assert step_path(tmp_path, "critiques") == tmp_path / "critiques.jsonl"
