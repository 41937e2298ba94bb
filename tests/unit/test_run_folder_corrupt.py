"""A file a resume depends on (manifest.json, state.json) that cannot be read is one line naming
it, exit 2, and the file is left as it was (issue 13, class 6): never a traceback, never a
fresh manifest written over the old one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.pipeline.manifest import Manifest
from cai.runfolder import MANIFEST_FILE, STATE_FILE, RunFolderCorrupt, read_record
from cai.stages.state import RunState, load_state

DAMAGED = {
    "not JSON": b'{"name": "x", "sessions": [',
    "not UTF-8": b'{"name": "\xff\xfe"}',
    "a field of the wrong type": b'{"name": "x", "wall_s": "soon"}',
    "not an object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_manifest_is_one_line_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MANIFEST_FILE).write_bytes(content)
    with pytest.raises(RunFolderCorrupt) as info:
        Manifest.load_or_new(tmp_path, "x")
    message = str(info.value)
    assert str(tmp_path / MANIFEST_FILE) in message and "\n" not in message
    assert (tmp_path / MANIFEST_FILE).read_bytes() == content


def test_the_field_at_fault_is_named(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_bytes(DAMAGED["a field of the wrong type"])
    with pytest.raises(RunFolderCorrupt, match="wall_s"):
        Manifest.load_or_new(tmp_path, "x")


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_run_state_is_one_line_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(RunFolderCorrupt, match=STATE_FILE):
        load_state(tmp_path)


def test_missing_files_are_a_fresh_start_and_good_ones_read_back(tmp_path: Path) -> None:
    assert read_record(tmp_path / STATE_FILE, RunState) is None
    assert Manifest.load_or_new(tmp_path, "fresh").name == "fresh"
    Manifest(name="kept", wall_s=3.5).save(tmp_path)
    assert Manifest.load_or_new(tmp_path, "other").wall_s == 3.5


def test_cai_generate_on_a_folder_with_a_damaged_manifest_exits_2_and_keeps_it(
    tmp_path: Path, stub_generator_url: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    damaged = DAMAGED["not JSON"]
    (run_dir / MANIFEST_FILE).write_bytes(damaged)
    args = ["generate", "--small-test", "--run-dir", str(run_dir), "--endpoint", stub_generator_url]
    result = CliRunner().invoke(app, [*args, "--model", "tiny", "--no-progress"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and MANIFEST_FILE in lines[0] and lines[0].startswith("error:")
    assert (run_dir / MANIFEST_FILE).read_bytes() == damaged
    assert [p.name for p in run_dir.iterdir()] == [MANIFEST_FILE]  # nothing else written
