"""The trainer's job queue in SQLite: jobs submitted, claimed in order, finished once, and the
idempotency keys of submissions. `Store` is the one object the service reads and writes its
state through; it also carries the event stream's reads (store_events.py) and the dataset and
adapter registries (store_registry.py). Rows hold protocol models as JSON, read back by
store_rows.py; these modules are the only ones that know the table layout besides core/db.py.

Every state change of a job writes a `state` event in the same transaction, so the event
stream and the job row never disagree.

A row that no longer validates (stored by an older trainer, or before a bound was tightened)
never takes a listing down (store_rows.py), and a job whose spec cannot be read is failed,
never run, when a worker claims it.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from protocol.adapters import AdapterRecord
from protocol.jobs import JobProgress, JobRecord, JobState
from services.trainer.core.db import Database
from services.trainer.store_events import EventReads, add_event
from services.trainer.store_registry import Registry
from services.trainer.store_rows import dumps, job_from_row, read_spec, unreadable_reason
from services.trainer.stored import Unreadable, salvage

logger = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued.value, JobState.running.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:16]}"


class Store(EventReads, Registry):
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- jobs ---------------------------------------------------------------------------

    def insert_job(self, conn: sqlite3.Connection, job_id: str, spec: Any) -> None:
        """Insert a queued job; call inside `db.transaction()` with the checks it depends on."""
        now = utcnow()
        conn.execute(
            "INSERT INTO jobs (id, kind, state, spec, output_name, created_at) "
            "VALUES (?, ?, 'queued', ?, ?, ?)",
            (job_id, spec.kind, spec.model_dump_json(), spec.output_name, now.isoformat()),
        )
        add_event(conn, job_id, "state", now, state=JobState.queued)

    def get_job(self, job_id: str) -> JobRecord | None:
        conn = self.db.connection()
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return job_from_row(row, self._position(conn, row))

    def list_jobs(self, state: JobState | None = None, limit: int = 1000) -> list[JobRecord]:
        conn = self.db.connection()
        if state is None:
            rows = conn.execute("SELECT * FROM jobs ORDER BY seq LIMIT ?", (limit,)).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY seq LIMIT ?", (state.value, limit)
            ).fetchall()
        order = self._queue_order(conn)
        return [job_from_row(row, order.get(row["seq"])) for row in rows]

    def jobs_before(self, kind: str, before: str | None, limit: int) -> list[JobRecord] | None:
        """Jobs of `kind`, newest first, submitted before job `before` (from the newest when
        None): a page of a listing that goes back in time. None when `before` is unknown."""
        conn = self.db.connection()
        cursor = 2**63 - 1
        if before is not None:
            row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (before,)).fetchone()
            if row is None:
                return None
            cursor = int(row["seq"])
        rows = conn.execute(
            "SELECT * FROM jobs WHERE kind = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (kind, cursor, limit),
        ).fetchall()
        order = self._queue_order(conn)
        return [job_from_row(row, order.get(row["seq"])) for row in rows]

    @staticmethod
    def _queue_order(conn: sqlite3.Connection) -> dict[int, int]:
        """seq -> place in the queue, of every queued job."""
        queued = conn.execute("SELECT seq FROM jobs WHERE state='queued' ORDER BY seq")
        return {row["seq"]: i for i, row in enumerate(queued)}

    def _position(self, conn: sqlite3.Connection, row: sqlite3.Row) -> int | None:
        if row["state"] != JobState.queued.value:
            return None
        (ahead,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq < ?", (row["seq"],)
        ).fetchone()
        return int(ahead)

    def output_name_taken(self, conn: sqlite3.Connection, name: str) -> str | None:
        """Why `name` cannot be a new output: registered, or the output of a live job."""
        if conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
            return f"an adapter or model named {name!r} is already registered"
        row = conn.execute(
            "SELECT id, state FROM jobs WHERE output_name = ? AND state IN ('queued','running')",
            (name,),
        ).fetchone()
        if row:
            return f"job {row['id']} ({row['state']}) already writes {name!r}"
        return None

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        with self.db.transaction() as conn:
            while True:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                _, problems = read_spec(row)
                if not problems:
                    break
                # Never run a spec that does not validate: fail it and take the next one.
                logger.warning("job %s: stored spec unreadable: %s", row["id"], problems)
                reason = unreadable_reason(problems)
                self.finish_job(row["id"], JobState.failed, error=reason, conn=conn)
            now = utcnow()
            conn.execute(
                "UPDATE jobs SET state='running', started_at=? WHERE id=?",
                (now.isoformat(), row["id"]),
            )
            add_event(conn, row["id"], "state", now, state=JobState.running)
        job = self.get_job(row["id"])
        assert job is not None
        return job

    def set_pid(self, job_id: str, pid: int | None) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET pid=? WHERE id=?", (pid, job_id))

    def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        adapter: AdapterRecord | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> bool:
        """Move a live job to a terminal state (and register its output in the same
        transaction). Returns False when the job was already terminal: the first end wins."""
        if conn is None:
            with self.db.transaction() as own:
                return self.finish_job(
                    job_id, state, error=error, result=result, adapter=adapter, conn=own
                )
        row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None or JobState(row["state"]).terminal:
            return False
        now = utcnow()
        conn.execute(
            "UPDATE jobs SET state=?, finished_at=?, error=?, result=?, pid=NULL WHERE id=?",
            (state.value, now.isoformat(), error, dumps(result or {}), job_id),
        )
        if adapter is not None:
            self.insert_adapter(conn, adapter)
        add_event(conn, job_id, "state", now, state=state, message=error)
        return True

    def record_progress(self, job_id: str, progress: JobProgress) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress=? WHERE id=? AND state='running'",
                (progress.model_dump_json(), job_id),
            )
            add_event(conn, job_id, "progress", utcnow(), progress=progress)

    def record_log(self, job_id: str, message: str) -> None:
        with self.db.transaction() as conn:
            add_event(conn, job_id, "log", utcnow(), message=message)

    def fail_interrupted(self, reason: str) -> list[str]:
        """At start: every job still `running` lost its process with the old service."""
        with self.db.transaction() as conn:
            ids = [r["id"] for r in conn.execute("SELECT id FROM jobs WHERE state='running'")]
            for job_id in ids:
                self.finish_job(job_id, JobState.failed, error=reason, conn=conn)
        return ids

    def queue_depth(self) -> int:
        (n,) = (
            self.db.connection()
            .execute("SELECT COUNT(*) FROM jobs WHERE state='queued'")
            .fetchone()
        )
        return int(n)

    def list_jobs_running_progress(self) -> list[JobProgress]:
        rows = self.db.connection().execute("SELECT progress FROM jobs WHERE state='running'")
        out = []
        for r in rows:
            try:
                out.append(salvage(JobProgress, r["progress"])[0])
            except Unreadable:
                continue
        return out

    def count_by_state(self) -> dict[str, int]:
        rows = self.db.connection().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts = {state.value: 0 for state in JobState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    # -- idempotency --------------------------------------------------------------------

    def idempotent_job(self, conn: sqlite3.Connection, key: str) -> tuple[str, str] | None:
        row = conn.execute(
            "SELECT body_sha256, job_id FROM idempotency_keys WHERE key=?", (key,)
        ).fetchone()
        return (row["body_sha256"], row["job_id"]) if row else None

    def remember_key(self, conn: sqlite3.Connection, key: str, body_sha: str, job_id: str) -> None:
        conn.execute(
            "INSERT INTO idempotency_keys (key, body_sha256, job_id, created_at) VALUES (?,?,?,?)",
            (key, body_sha, job_id, utcnow().isoformat()),
        )
