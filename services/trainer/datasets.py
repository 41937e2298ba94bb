"""Dataset uploads: stream to a temporary file while hashing, validate every row, then move
the file into `data_dir/datasets/<id>.jsonl` with one rename.

The id is content-addressed (`ds-` + sha256[:16] of the bytes): the same upload twice is
the same dataset. A bad row is refused with its line number and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import ValidationError

from protocol.datasets import DatasetRecord, PreferencePair
from services.trainer.core.errors import NotFound, PayloadTooLarge, Unprocessable
from services.trainer.core.files import fsync_dir
from services.trainer.store import Store, utcnow

DATASET_ID = re.compile(r"^ds-[0-9a-f]{16}$")
ROW_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class DatasetLayout:
    data_dir: Path

    @property
    def datasets(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def tmp(self) -> Path:
        return self.data_dir / "tmp"

    def path(self, dataset_id: str) -> Path:
        if not DATASET_ID.fullmatch(dataset_id):
            raise NotFound(
                f"unknown dataset {dataset_id[:64]!r}: ids look like `ds-` + 16 hex digits, "
                "as returned by POST /v1/datasets"
            )
        return self.datasets / f"{dataset_id}.jsonl"


@dataclass(frozen=True)
class Validated:
    rows: int
    metadata_keys: list[str]


def _pydantic_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            parts.append(f"field `{field}` is missing")
        elif field:
            parts.append(f"field `{field}`: {err['msg']}")
        else:
            parts.append(str(err["msg"]).removeprefix("Value error, "))
    return "; ".join(parts)


def validate_jsonl(path: Path) -> Validated:
    """Check every line of a JSONL file as a PreferencePair; blank lines are skipped.

    Raises Unprocessable naming the first bad line (1-based) and why."""
    rows = 0
    extra: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Unprocessable(
                    f"line {number} is not valid UTF-8 (byte {raw[exc.start]:#04x} at "
                    f"column {exc.start + 1}): save the file as UTF-8",
                    line=number,
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Unprocessable(
                    f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}): "
                    "write one JSON object per line",
                    line=number,
                ) from None
            if not isinstance(obj, dict):
                raise Unprocessable(
                    f"line {number} is a JSON {type(obj).__name__}, not an object: write "
                    '{"prompt": ..., "chosen": ..., "rejected": ...}',
                    line=number,
                )
            try:
                PreferencePair.model_validate(obj)
            except ValidationError as exc:
                raise Unprocessable(
                    f"line {number}: {_pydantic_reason(exc)} (each row needs non-empty, "
                    "different `chosen` and `rejected` strings and a `prompt`)",
                    line=number,
                ) from None
            rows += 1
            extra.update(k for k in obj if k not in ROW_FIELDS)
    if rows == 0:
        raise Unprocessable(
            "the dataset has no rows: upload JSONL with one "
            '{"prompt": ..., "chosen": ..., "rejected": ...} object per line'
        )
    return Validated(rows=rows, metadata_keys=sorted(extra))


def _prompt_digests(path: Path) -> dict[bytes, str]:
    digests: dict[bytes, str] = {}
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                prompt = str(json.loads(raw)["prompt"])
                digests.setdefault(hashlib.sha256(prompt.encode()).digest(), prompt)
    return digests


def shared_prompts(train: Path, held_out: Path) -> tuple[int, str | None]:
    """How many held-out prompts also occur in the training set, and one of them.
    Both files were validated at upload, so every line parses."""
    held = _prompt_digests(held_out)
    seen: set[bytes] = set()
    with train.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                digest = hashlib.sha256(str(json.loads(raw)["prompt"]).encode()).digest()
                if digest in held:
                    seen.add(digest)
    example = held[next(iter(seen))] if seen else None
    return len(seen), example


async def ingest(
    chunks: AsyncIterator[bytes],
    *,
    layout: DatasetLayout,
    store: Store,
    max_bytes: int,
    name: str | None = None,
) -> tuple[DatasetRecord, bool]:
    """Store an upload; returns the record and whether it is new (False: same bytes before)."""
    layout.tmp.mkdir(parents=True, exist_ok=True)
    tmp = layout.tmp / f"upload-{uuid.uuid4().hex}.jsonl"
    digest = hashlib.sha256()
    size = 0
    try:
        async with await anyio.open_file(tmp, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"the upload is larger than the limit of {max_bytes} bytes: split the "
                        "dataset or raise CAI_TRAINER_MAX_UPLOAD_BYTES on the trainer"
                    )
                digest.update(chunk)
                await out.write(chunk)
            await out.flush()
            await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
        checked = await anyio.to_thread.run_sync(validate_jsonl, tmp)
        sha = digest.hexdigest()
        dataset_id = f"ds-{sha[:16]}"
        final = layout.path(dataset_id)
        existing = store.get_dataset(dataset_id)
        if existing is not None and final.exists():
            return existing, False
        layout.datasets.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(layout.datasets)
        record = DatasetRecord(
            id=dataset_id,
            sha256=sha,
            rows=checked.rows,
            bytes=size,
            name=name,
            metadata_keys=checked.metadata_keys,
            created_at=utcnow(),
        )
        created = store.insert_dataset(record)
        if not created:
            stored = store.get_dataset(dataset_id)
            assert stored is not None
            return stored, False
        return record, True
    finally:
        tmp.unlink(missing_ok=True)
