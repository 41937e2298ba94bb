"""The run folder: one JSONL file per step, appended record by record, safe to kill at any moment.

    store = RunStore(Path("runs/demo"), StoreConfig())
    store.open()                                 # repairs a torn last line, loads every record
    store.files["responses"].append(record)      # one os.write of one whole line
    store.files["responses"].get("qa-00012.r")   # resume: what is already done
    store.close()

Why a record is never half there: each record is serialised to one line and written with a
single `os.write` on an `O_APPEND` descriptor, so a killed process leaves either the whole
line or a prefix of it without its newline. On open, such a torn tail (no final newline, or
a last line that is not a valid record) is cut off, logged and counted, and never parsed as
data; an invalid line *before* the last is real corruption and stops the run with its line
number. Derived files (`train.jsonl`, `test.jsonl`) are written whole to a temporary file
and renamed over the old one (cai.runfolder.write_jsonl_atomic).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from cai.pipeline.config import StoreConfig
from cai.pipeline.records import RECORD_TYPES, STEPS, Record
from cai.runfolder import REPLACED_DIR, SPLIT_FILES, step_path, write_jsonl_atomic

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


class StoreCorrupt(RuntimeError):
    """A step file has an invalid line that is not a torn tail; the message names it."""


class StepFile(Generic[R]):
    """One step's JSONL file: append-only, with an in-memory index of the records by id."""

    def __init__(self, path: Path, record_type: type[R], config: StoreConfig) -> None:
        self.path = path
        self.record_type = record_type
        self.config = config
        self.records: dict[str, R] = {}
        self.repaired_bytes = 0
        self._fd: int | None = None
        self._last_sync = time.monotonic()
        self._dirty = False

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, record_id: str) -> R | None:
        return self.records.get(record_id)

    def open(self) -> None:
        self.records = self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> dict[str, R]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        lines = data[:keep].split(b"\n")[:-1]
        records: dict[str, R] = {}
        for number, line in enumerate(lines, start=1):
            try:
                record = self.record_type.model_validate_json(line)
            except ValidationError as exc:
                if number == len(lines):
                    keep -= len(line) + 1  # a complete-looking but invalid last line: torn too
                    break
                raise StoreCorrupt(
                    f"{self.path}:{number} is not a valid {self.record_type.__name__} ({exc.errors()[0]['msg']}); "
                    "fix or delete that line, or the whole file to redo the step"
                ) from exc
            if record.id in records:
                logger.warning(
                    "%s:%d repeats id %s; keeping the first", self.path, number, record.id
                )
                continue
            records[record.id] = record
        if keep < len(data):
            self.repaired_bytes = len(data) - keep
            logger.warning(
                "%s: cut a torn last line (%d bytes) left by an interrupted write",
                self.path,
                self.repaired_bytes,
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
        return records

    def append(self, record: R) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open")
        if record.id in self.records:
            raise ValueError(f"{self.path}: record {record.id} is already written")
        line = (record.model_dump_json() + "\n").encode()
        written = os.write(self._fd, line)
        while written < len(line):  # only on a full disk or a signal; the reader cuts a torn tail
            written += os.write(self._fd, line[written:])
        self.records[record.id] = record
        self._dirty = True
        if self.config.fsync == "always":
            self.sync()
        elif self.config.fsync == "periodic":
            now = time.monotonic()
            if now - self._last_sync >= self.config.fsync_interval_s:
                self.sync()

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def drop(self, predicate: Any) -> int:
        """Remove records matching `predicate` (e.g. failed ones, to retry them); atomic rewrite."""
        kept = {rid: rec for rid, rec in self.records.items() if not predicate(rec)}
        dropped = len(self.records) - len(kept)
        if dropped:
            was_open = self._fd is not None
            self.close()
            write_jsonl_atomic(self.path, kept.values())
            self.records = kept
            if was_open:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return dropped

    def close(self) -> None:
        if self._fd is not None:
            if self.config.fsync != "never":
                self.sync()
            os.close(self._fd)
            self._fd = None


class RunStore:
    """Every step file of one run folder."""

    def __init__(
        self,
        run_dir: Path,
        config: StoreConfig,
        record_types: dict[str, type[Record]] | None = None,
    ) -> None:
        """`record_types`: step -> its record type, in step order (default: every step of
        the default pipeline, `records.RECORD_TYPES`)."""
        self.run_dir = run_dir
        self.config = config
        self.files: dict[str, StepFile[Any]] = {
            step: StepFile(step_path(run_dir, step), record_type, config)
            for step, record_type in (record_types or RECORD_TYPES).items()
        }

    def open(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for file in self.files.values():
            file.open()

    def close(self) -> None:
        for file in self.files.values():
            file.close()

    @property
    def repaired_bytes(self) -> dict[str, int]:
        return {step: f.repaired_bytes for step, f in self.files.items() if f.repaired_bytes}

    def path(self, name: str) -> Path:
        return step_path(self.run_dir, name)


RERUN_STEPS: tuple[str, ...] = (*STEPS, "split")


def archive_from(run_dir: Path, step: str) -> list[Path]:
    """Move `step`'s file and every later step's out of the way, for a rerun from `step`.

    Files go to `run_dir/replaced/<n>/` (nothing is deleted); the next run regenerates them.
    """
    if step not in RERUN_STEPS:
        raise ValueError(f"unknown step {step!r}; choose one of {', '.join(RERUN_STEPS)}")
    later = list(STEPS[STEPS.index(step) :]) if step in STEPS else []
    paths = [step_path(run_dir, name) for name in (*later, *SPLIT_FILES)]
    present = [path for path in paths if path.exists()]
    if not present:
        return []
    archive = run_dir / REPLACED_DIR
    number = 1 + max((int(p.name) for p in archive.glob("*") if p.name.isdigit()), default=0)
    target = archive / str(number)
    target.mkdir(parents=True)
    moved = []
    for path in present:
        destination = target / path.name
        os.replace(path, destination)
        moved.append(destination)
    return moved
