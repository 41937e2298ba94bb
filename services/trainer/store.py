"""Record-level reads and writes of the trainer's SQLite state (jobs, events, datasets,
adapters, idempotency keys). Rows hold protocol models as JSON; this module is the only
place that knows the table layout besides core/db.py.

Every state change of a job writes a `state` event in the same transaction, so the event
stream and the job row never disagree.

A row that no longer validates (stored by an older trainer, or before a bound was tightened)
never takes a listing down: it is read through `stored.salvage`, and a job whose spec cannot
be read shows as failed with the reason, and is failed, never run, when a worker claims it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from protocol.adapters import AdapterRecord
from protocol.datasets import DatasetRecord
from protocol.jobs import (
    DpoJobSpec,
    JobEvent,
    JobProgress,
    JobRecord,
    JobState,
    MergeJobSpec,
)
from services.trainer.core.db import Database
from services.trainer.stored import Unreadable, finite, salvage

logger = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued.value, JobState.running.value)
# Shown for what an unreadable spec left unknown; never a name any job could have.
UNKNOWN = "unreadable"
_EPOCH = datetime.fromtimestamp(0, UTC)


def _dumps(value: Any) -> str:
    """JSON for a column: finite numbers only (JSON has no Infinity or NaN)."""
    return json.dumps(finite(value), allow_nan=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:16]}"


def unreadable_reason(problems: list[str]) -> str:
    return (
        f"the trainer cannot read this job's stored spec ({'; '.join(problems)}): an older "
        "trainer accepted it; the spec shown has defaults in place of those fields. Submit "
        "the job again with values inside the documented bounds"
    )


def _read_spec(row: sqlite3.Row) -> tuple[DpoJobSpec | MergeJobSpec, list[str]]:
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


def _job_from_row(row: sqlite3.Row, position: int | None = None) -> JobRecord:
    spec, problems = _read_spec(row)
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
        created_at=_time(row["created_at"]) or _EPOCH,
        started_at=_time(row["started_at"]),
        finished_at=_time(row["finished_at"]),
        error=error,
        progress=progress,
        result=_json_object(row["result"]),
        position=position,
    )


class Store:
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
        self._add_event(conn, job_id, "state", now, state=JobState.queued)

    def get_job(self, job_id: str) -> JobRecord | None:
        conn = self.db.connection()
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return _job_from_row(row, self._position(conn, row))

    def list_jobs(self, state: JobState | None = None, limit: int = 1000) -> list[JobRecord]:
        conn = self.db.connection()
        if state is None:
            rows = conn.execute("SELECT * FROM jobs ORDER BY seq LIMIT ?", (limit,)).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY seq LIMIT ?", (state.value, limit)
            ).fetchall()
        order = self._queue_order(conn)
        return [_job_from_row(row, order.get(row["seq"])) for row in rows]

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
        return [_job_from_row(row, order.get(row["seq"])) for row in rows]

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
                _, problems = _read_spec(row)
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
            self._add_event(conn, row["id"], "state", now, state=JobState.running)
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
            (state.value, now.isoformat(), error, _dumps(result or {}), job_id),
        )
        if adapter is not None:
            self.insert_adapter(conn, adapter)
        self._add_event(conn, job_id, "state", now, state=state, message=error)
        return True

    def record_progress(self, job_id: str, progress: JobProgress) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress=? WHERE id=? AND state='running'",
                (progress.model_dump_json(), job_id),
            )
            self._add_event(conn, job_id, "progress", utcnow(), progress=progress)

    def record_log(self, job_id: str, message: str) -> None:
        with self.db.transaction() as conn:
            self._add_event(conn, job_id, "log", utcnow(), message=message)

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

    # -- events -------------------------------------------------------------------------

    def _add_event(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        type_: str,
        time: datetime,
        *,
        state: JobState | None = None,
        progress: JobProgress | None = None,
        message: str | None = None,
    ) -> None:
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

    def events_after(self, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
        rows = (
            self.db.connection()
            .execute(
                "SELECT seq, body FROM job_events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            )
            .fetchall()
        )
        return [self._event(job_id, r) for r in rows]

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
        return [self._event(job_id, r) for r in rows]

    @staticmethod
    def _event(job_id: str, row: sqlite3.Row) -> JobEvent:
        fill = {"job_id": job_id, "seq": row["seq"], "type": "log", "time": _EPOCH}
        try:
            return salvage(JobEvent, row["body"], fill)[0]
        except Unreadable as exc:
            message = f"an event the trainer cannot read was skipped ({exc})"
            return JobEvent(job_id=job_id, seq=row["seq"], type="log", time=_EPOCH, message=message)

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

    # -- datasets -----------------------------------------------------------------------

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        row = (
            self.db.connection()
            .execute("SELECT record FROM datasets WHERE id=?", (dataset_id,))
            .fetchone()
        )
        return DatasetRecord.model_validate_json(row["record"]) if row else None

    def datasets_page(
        self, after: str | None, limit: int, newest_first: bool
    ) -> list[DatasetRecord] | None:
        """Datasets in upload order (or its reverse), from the one after dataset `after`.
        None when `after` is unknown."""
        conn = self.db.connection()
        cursor = None
        if after is not None:
            row = conn.execute("SELECT rowid FROM datasets WHERE id=?", (after,)).fetchone()
            if row is None:
                return None
            cursor = int(row[0])
        if newest_first:
            where, order, start = "rowid < ?", "DESC", 2**63 - 1
        else:
            where, order, start = "rowid > ?", "ASC", 0
        rows = conn.execute(
            f"SELECT record FROM datasets WHERE {where} ORDER BY rowid {order} LIMIT ?",
            (start if cursor is None else cursor, limit),
        )
        return [DatasetRecord.model_validate_json(r["record"]) for r in rows]

    def insert_dataset(self, record: DatasetRecord) -> bool:
        """Register a dataset; False when the same id was already there (same bytes)."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO datasets (id, record) VALUES (?, ?)",
                (record.id, record.model_dump_json()),
            )
            return cur.rowcount == 1

    # -- adapters -----------------------------------------------------------------------

    def insert_adapter(self, conn: sqlite3.Connection, record: AdapterRecord) -> None:
        conn.execute(
            "INSERT INTO adapters (name, kind, created_at, record) VALUES (?, ?, ?, ?)",
            (record.name, record.kind, record.created_at.isoformat(), record.model_dump_json()),
        )

    def get_adapter(self, name: str) -> AdapterRecord | None:
        row = (
            self.db.connection()
            .execute("SELECT name, kind, created_at, record FROM adapters WHERE name=?", (name,))
            .fetchone()
        )
        return self._adapter(row) if row else None

    def list_adapters(self, kind: str | None = None) -> list[AdapterRecord]:
        conn = self.db.connection()
        columns = "SELECT name, kind, created_at, record FROM adapters"
        if kind is None:
            rows = conn.execute(f"{columns} ORDER BY created_at, name")
        else:
            rows = conn.execute(f"{columns} WHERE kind=? ORDER BY created_at, name", (kind,))
        return [record for r in rows if (record := self._adapter(r)) is not None]

    @staticmethod
    def _adapter(row: sqlite3.Row) -> AdapterRecord | None:
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
