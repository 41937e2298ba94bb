"""Turn a GGUF file into a plain transformers folder (config, safetensors, tokenizer).

    folder = convert_gguf(Path("model.gguf"), Path(".cache/models/mine"))
    folder = ensure_folder("/data/model.gguf", cache=Path(".cache/models"))   # cached by hash

vLLM's LoRA support and TRL both want an ordinary checkpoint, so a GGUF is de-quantized once
(transformers' GGUF loader) and saved in bfloat16, the dtype real checkpoints ship in.
`save_pretrained` refuses a model loaded from GGUF ("quantized with gguf and is not
serializable"): the weights go into a fresh model built from the same config instead, and
every key must match. The result is a pure function of the GGUF bytes: the same file gives
byte-identical safetensors (the marker file records every output file's sha256).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from services.modelfiles.fetch import sha256_file

logger = logging.getLogger(__name__)

MARKER = ".cai-built"


class ConvertError(RuntimeError):
    """The GGUF could not become a transformers folder; the message says why."""


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file in the folder (except the marker), by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def built_from(folder: Path) -> str | None:
    """The sha256 of the GGUF a finished folder was converted from (None: not built here)."""
    try:
        return str(json.loads((folder / MARKER).read_text())["source_sha256"])
    except (OSError, ValueError, KeyError):
        return None


def convert_gguf(gguf: Path, out: Path, *, source_sha256: str | None = None) -> Path:
    """Convert `gguf` into `out` (replaced atomically: a reader never sees half a folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise ConvertError(f"{gguf} is not a file")
    source_sha256 = source_sha256 or sha256_file(gguf)
    staging = out.with_name(f".{out.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        logger.info("de-quantizing %s (this takes about a minute on 2 cores)", gguf)
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (ValueError, OSError, KeyError, ImportError) as exc:
            raise ConvertError(f"transformers cannot load {gguf}: {exc}") from exc
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        torch.manual_seed(0)  # from_config initialises weights that load_state_dict replaces
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        result = fresh.load_state_dict(loaded.state_dict(), strict=False)
        # Tied embeddings show up as an unexpected or missing lm_head key; anything else is a
        # weight this model would silently initialise at random.
        missing = [k for k in result.missing_keys if k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise ConvertError(
                f"{gguf}: weights do not match the model class ({len(missing)} missing, "
                f"{len(result.unexpected_keys)} unexpected, e.g. {(missing + result.unexpected_keys)[:3]})"
            )
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {
            "source": gguf.name,
            "source_sha256": source_sha256,
            "architecture": type(fresh).__name__,
            "parameters": sum(p.numel() for p in fresh.parameters()),
            "files": fingerprint(staging),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        retired = out.with_name(f".{out.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if out.exists():
            out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("model folder written to %s", out)
    return out


def ensure_folder(model: str, cache: Path) -> str:
    """`model` itself, or for a `.gguf` file the folder it was converted into (once, by hash).

    The generator, the trainer and merge jobs all call this, so a user's own GGUF works as
    `base_model` everywhere and is converted only the first time.
    """
    path = Path(model)
    if path.suffix.lower() != ".gguf":
        return model
    if not path.is_file():
        raise ConvertError(f"{model} ends in .gguf but is not a file")
    digest = sha256_file(path)
    folder = cache / f"gguf-{path.stem}-{digest[:12]}"
    if built_from(folder) != digest:
        convert_gguf(path, folder, source_sha256=digest)
    return str(folder)
