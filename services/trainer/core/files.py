"""Crash-safe file operations: a file or folder appears under its final name complete, or
not at all (write elsewhere on the same filesystem, fsync, rename, fsync the parent)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from services.modelfiles.fetch import sha256_file


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        fsync_dir(path)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def publish_folder(staging: Path, final: Path) -> None:
    """Move a finished folder into place with one rename (same filesystem).

    `final` must not exist: the caller checked that the name is free in the registry, so a
    leftover folder there is debris of a crash between rename and commit and goes first."""
    fsync_tree(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        discard(final)
    os.rename(staging, final)
    fsync_dir(final.parent)


def discard(path: Path) -> None:
    """Remove a folder so that it is gone from its name at once (rename, then delete)."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sha256_tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`, sorted by path."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
