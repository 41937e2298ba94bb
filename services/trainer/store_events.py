"""A job's event stream in SQLite (`job_events`): state changes, progress and log lines, each
numbered from 1 within its job, read back in pages after or before a seq.

Events are written by `add_event` inside the transaction that makes the change they report
(store.py), so the stream and the job row never disagree.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from protocol.jobs import JobEvent, JobProgress, JobState
from services.trainer.core.db import Database
from services.trainer.store_rows import event_from_row


def add_event(
    conn: sqlite3.Connection,
    job_id: str,
    type_: str,
    time: datetime,
    *,
    state: JobState | None = None,
    progress: JobProgress | None = None,
    message: str | None = None,
) -> None:
    """Append the job's next event; call inside the transaction of the change it reports."""
    (last,) = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id=?", (job_id,)
    ).fetchone()
    event = JobEvent(
        job_id=job_id,
        seq=int(last) + 1,
        type=type_,
        time=time,
        state=state,
        progress=progress,
        message=message,
    )
    conn.execute(
        "INSERT INTO job_events (job_id, seq, type, body) VALUES (?, ?, ?, ?)",
        (job_id, event.seq, type_, event.model_dump_json()),
    )


class EventReads:
    """The read side of the event stream, part of `Store`."""

    db: Database

    def events_after(self, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
        rows = (
            self.db.connection()
            .execute(
                "SELECT seq, body FROM job_events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            )
            .fetchall()
        )
        return [event_from_row(job_id, r) for r in rows]

    def events_before(self, job_id: str, before: int, limit: int) -> list[JobEvent]:
        """The job's events with a seq below `before`, newest first."""
        rows = (
            self.db.connection()
            .execute(
                "SELECT seq, body FROM job_events WHERE job_id=? AND seq<? ORDER BY seq DESC "
                "LIMIT ?",
                (job_id, before, limit),
            )
            .fetchall()
        )
        return [event_from_row(job_id, r) for r in rows]
