"""Step files: one write per record, torn tails cut on open, atomic derived files."""

from __future__ import annotations

import json
import os

import pytest

from cai.pipeline.config import StoreConfig
from cai.pipeline.records import ResponseRecord
from cai.pipeline.store import RunStore, StepFile, StoreCorrupt, archive_from
from cai.runfolder import write_jsonl_atomic


def _record(i: int) -> ResponseRecord:
    return ResponseRecord(
        id=f"qa-{i:05d}.r",
        instruction_id=f"qa-{i:05d}",
        type="qa",
        text=f"answer {i}\nwith a newline",
    )


def _file(tmp_path, **config) -> StepFile[ResponseRecord]:
    step = StepFile(tmp_path / "responses.jsonl", ResponseRecord, StoreConfig(**config))
    step.open()
    return step


def test_each_record_is_one_line_written_with_one_write(tmp_path, monkeypatch):
    calls = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append(data) or real_write(fd, data))
    step = _file(tmp_path)
    step.append(_record(1))
    step.append(_record(2))
    step.close()
    assert len(calls) == 2 and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in calls)
    lines = (tmp_path / "responses.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["qa-00001.r", "qa-00002.r"]


def test_a_torn_last_line_is_cut_and_never_parsed(tmp_path):
    step = _file(tmp_path)
    step.append(_record(1))
    step.close()
    path = tmp_path / "responses.jsonl"
    whole = _record(2).model_dump_json().encode()
    with open(path, "ab") as handle:
        handle.write(whole[: len(whole) // 2])  # what a SIGKILL mid-write leaves
    reopened = _file(tmp_path)
    assert list(reopened.records) == ["qa-00001.r"]
    assert reopened.repaired_bytes == len(whole) // 2
    reopened.append(_record(2))
    reopened.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [
        "qa-00001.r",
        "qa-00002.r",
    ]


def test_an_invalid_last_line_with_a_newline_is_cut_too(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_bytes(
        _record(1).model_dump_json().encode() + b"\n" + b'{"id": "qa-00002.r", "instr\n'
    )
    step = _file(tmp_path)
    assert list(step.records) == ["qa-00001.r"]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 1


def test_an_invalid_line_before_the_last_is_corruption_named_by_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_bytes(b"garbage\n" + _record(1).model_dump_json().encode() + b"\n")
    with pytest.raises(StoreCorrupt, match=r"responses\.jsonl:1"):
        _file(tmp_path)


def test_a_record_is_never_written_twice(tmp_path):
    step = _file(tmp_path)
    step.append(_record(1))
    with pytest.raises(ValueError, match="already written"):
        step.append(_record(1))


def test_fsync_always_syncs_every_record(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    step = _file(tmp_path, fsync="always")
    step.append(_record(1))
    step.append(_record(2))
    assert len(synced) == 2


def test_dropping_failed_records_rewrites_the_file_atomically(tmp_path):
    step = _file(tmp_path)
    step.append(_record(1))
    failed = _record(2)
    failed.status, failed.reason = "failed", "GeneratorServerError: 500"
    step.append(failed)
    assert step.drop(lambda r: r.status == "failed") == 1
    step.append(_record(3))
    step.close()
    ids = [
        json.loads(line)["id"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()
    ]
    assert ids == ["qa-00001.r", "qa-00003.r"]


def test_write_jsonl_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("old\n")
    assert write_jsonl_atomic(path, [{"prompt": "p", "chosen": "a", "rejected": "b"}]) == 1
    assert json.loads(path.read_text()) == {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_run_store_opens_every_step_file(tmp_path):
    store = RunStore(tmp_path / "run", StoreConfig())
    store.open()
    store.close()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        f"{s}.jsonl"
        for s in ("instructions", "responses", "critiques", "revisions", "judgements", "pairs")
    )


def test_archive_from_moves_the_step_and_every_later_one(tmp_path):
    for name in (
        "instructions",
        "responses",
        "critiques",
        "revisions",
        "judgements",
        "pairs",
        "train",
        "test",
    ):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    moved = archive_from(tmp_path, "judgements")
    assert sorted(p.name for p in moved) == [
        "judgements.jsonl",
        "pairs.jsonl",
        "test.jsonl",
        "train.jsonl",
    ]
    assert (tmp_path / "revisions.jsonl").exists() and not (tmp_path / "pairs.jsonl").exists()
    assert all(p.parent == tmp_path / "replaced" / "1" for p in moved)
    with pytest.raises(ValueError, match="unknown step"):
        archive_from(tmp_path, "nonsense")
