"""Stored rows read back as protocol records, and values written as JSON columns.

A row that no longer validates (stored by an older trainer, or before a bound was tightened)
never takes a listing down: it is read through `stored.salvage`. A job whose spec cannot be
read shows as failed with the reason; an event shows as a log line saying it was skipped; an
adapter keeps what still validates, or is left out of the listing (logged).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime
from typing import Any

from protocol.adapters import AdapterRecord
from protocol.jobs import DpoJobSpec, JobEvent, JobProgress, JobRecord, JobState, MergeJobSpec
from services.trainer.stored import Unreadable, finite, salvage

logger = logging.getLogger(__name__)

# Shown for what an unreadable spec left unknown; never a name any job could have.
UNKNOWN = "unreadable"
EPOCH = datetime.fromtimestamp(0, UTC)


def dumps(value: Any) -> str:
    """JSON for a column: finite numbers only (JSON has no Infinity or NaN)."""
    return json.dumps(finite(value), allow_nan=False)


def unreadable_reason(problems: list[str]) -> str:
    return (
        f"the trainer cannot read this job's stored spec ({'; '.join(problems)}): an older "
        "trainer accepted it; the spec shown has defaults in place of those fields. Submit "
        "the job again with values inside the documented bounds"
    )


def read_spec(row: sqlite3.Row) -> tuple[DpoJobSpec | MergeJobSpec, list[str]]:
    """The job's spec, and what was wrong with it as stored ([] when it validated)."""
    name = row["output_name"]
    if row["kind"] == "merge":
        merge_fill = {"kind": "merge", "adapter": UNKNOWN, "output_name": name}
        try:
            return salvage(MergeJobSpec, row["spec"], merge_fill)
        except Unreadable as exc:
            return MergeJobSpec(adapter=UNKNOWN, output_name=UNKNOWN), [str(exc)]
    dpo_fill = {"kind": "dpo", "base_model": UNKNOWN, "dataset_id": UNKNOWN, "output_name": name}
    try:
        return salvage(DpoJobSpec, row["spec"], dpo_fill)
    except Unreadable as exc:
        problems = [str(exc)] if row["kind"] == "dpo" else [f"unknown job kind {row['kind']!r}"]
        return DpoJobSpec(base_model=UNKNOWN, dataset_id=UNKNOWN, output_name=UNKNOWN), problems


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return finite(value) if isinstance(value, dict) else {}


def job_from_row(row: sqlite3.Row, position: int | None = None) -> JobRecord:
    """A `jobs` row as a record; an unreadable spec or state makes a live job show failed."""
    spec, problems = read_spec(row)
    try:
        progress, _ = salvage(JobProgress, row["progress"])
    except Unreadable:
        progress = JobProgress()
    try:
        state = JobState(row["state"])
    except ValueError:
        state, problems = JobState.failed, [*problems, f"unknown state {row['state']!r}"]
    error = row["error"]
    if problems:
        reason = unreadable_reason(problems)
        if state.terminal:
            error = f"{error}; {reason}" if error else reason
        else:
            state, error, position = JobState.failed, reason, None
    return JobRecord(
        id=row["id"],
        kind=spec.kind,
        state=state,
        spec=spec,
        created_at=_time(row["created_at"]) or EPOCH,
        started_at=_time(row["started_at"]),
        finished_at=_time(row["finished_at"]),
        error=error,
        progress=progress,
        result=_json_object(row["result"]),
        position=position,
    )


def event_from_row(job_id: str, row: sqlite3.Row) -> JobEvent:
    """A `job_events` row (seq, body); one that cannot be read becomes a log line saying so."""
    fill = {"job_id": job_id, "seq": row["seq"], "type": "log", "time": EPOCH}
    try:
        return salvage(JobEvent, row["body"], fill)[0]
    except Unreadable as exc:
        message = f"an event the trainer cannot read was skipped ({exc})"
        return JobEvent(job_id=job_id, seq=row["seq"], type="log", time=EPOCH, message=message)


def adapter_from_row(row: sqlite3.Row) -> AdapterRecord | None:
    """A registry row; its unreadable fields dropped (metrics stored as null by an older
    trainer), or None, logged, when nothing valid can be made of it."""
    fill = {
        "name": row["name"],
        "kind": row["kind"],
        "path": "",
        "base_model": UNKNOWN,
        "created_at": row["created_at"],
    }
    try:
        record, problems = salvage(AdapterRecord, row["record"], fill)
    except Unreadable as exc:
        logger.warning("adapter %r: stored record unreadable, not listed: %s", row["name"], exc)
        return None
    if problems:
        logger.warning("adapter %r: stored record partly unreadable: %s", row["name"], problems)
    return record
