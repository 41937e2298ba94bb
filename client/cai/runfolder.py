"""The run folder: where each file of a run lies, its name, the one atomic writer, the readers.

    runs/<name>/                    `cai run` (cai.stages); `cai generate` writes a pipeline
                                    folder (below) here directly
        state.json                  where the run stands (cai.stages.state)
        manifest.json               config, versions, per-stage models, jobs, evaluation
        steps.jsonl                 wall time, GPU-seconds, tokens and cost per finished step
        judge_check.json            the judge measured on hand-checkable cases
        eval.jsonl                  held-out answers and verdicts, stage 0 = the base
        report.html                 `cai report`
        stages/<N>/                 stage N: a pipeline folder plus the stage's evaluation
            config.yaml             the pipeline config the records were made with
            manifest.json           the pipeline's manifest (cai.pipeline.manifest)
            accounting.jsonl        the current session's token and time log
            <step>.jsonl            one file per pipeline step, appended record by record
            train.jsonl test.jsonl  the split pairs, written whole
            replaced/<n>/           step files moved aside by a rerun (nothing is deleted)
            train_events.jsonl      the DPO job's training curve
            eval_summary.json       EvalSummary of the stage
            pair_scores.jsonl       implicit rewards of the held-out pairs

Every file that is replaced rather than appended goes through `atomic_file`: a temporary file
in the same folder, fsynced, renamed over the target, then the folder fsynced. A process
killed at any moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


class RunFolderCorrupt(RuntimeError):
    """A file the run resumes from (manifest, state) cannot be read; the message names it."""


STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
STEPS_FILE = "steps.jsonl"
JUDGE_CHECK_FILE = "judge_check.json"
EVAL_FILE = "eval.jsonl"
REPORT_FILE = "report.html"
STAGES_DIR = "stages"
CONFIG_FILE = "config.yaml"
ACCOUNTING_FILE = "accounting.jsonl"
SPLIT_FILES: tuple[str, ...] = ("train", "test")
REPLACED_DIR = "replaced"
TRAIN_EVENTS_FILE = "train_events.jsonl"
EVAL_SUMMARY_FILE = "eval_summary.json"
PAIR_SCORES_FILE = "pair_scores.jsonl"


def stage_folder(run_dir: Path, number: int) -> Path:
    """Stage `number`'s folder (0 holds only the baseline's evaluation files)."""
    return Path(run_dir) / STAGES_DIR / str(number)


def step_path(folder: Path, step: str) -> Path:
    """The JSONL file of pipeline step (or split) `step` in a pipeline folder."""
    return Path(folder) / f"{step}.jsonl"


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle whose bytes replace `path` all at once when the block ends without error.

    Mode 0644 (mkstemp's 0600 would make a shared run folder unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` (text as UTF-8), all or nothing."""
    with atomic_file(path) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def write_json_atomic(path: Path, data: object) -> None:
    """Replace `path` with `data` as indented JSON, keys sorted, and a final newline."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Replace `path` with one compact JSON line per row; return the number of rows."""
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            if isinstance(row, BaseModel):
                line = row.model_dump_json()
            else:
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            handle.write(line.encode() + b"\n")
            count += 1
    return count


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file ([] if there is none). A torn last line (a process
    killed mid-append) is ignored; a malformed line elsewhere is logged and skipped."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number != len(lines):  # the last segment without "\n" is a torn append
                logger.warning("%s:%d is not JSON; skipped", path, number)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} if it is missing, unreadable or not an object (logged)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s unreadable (%s); ignored", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def read_record(path: Path, model: type[ModelT]) -> ModelT | None:
    """The `model` stored in `path` (None if there is none yet), or `RunFolderCorrupt`.

    For the files a resume depends on: such a file is written atomically, so one that does
    not parse was edited or damaged by hand, and guessing past it would lose or double count
    what it recorded. The one-line error names the file and the first problem.
    """
    if not path.exists():
        return None
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise RunFolderCorrupt(
            f"{path} cannot be read ({where}: {first['msg']}): restore it, or move it aside "
            "to start this run folder's bookkeeping anew"
        ) from None
    except OSError as exc:
        raise RunFolderCorrupt(f"{path} cannot be read: {exc.strerror or exc}") from None
