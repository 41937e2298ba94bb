"""SQLite for the trainer's durable state: one file, WAL, one connection per thread.

Every write goes through `Database.transaction()` (`BEGIN IMMEDIATE`), so a change that
touches several rows (a job succeeds *and* its adapter is registered) commits whole or not
at all, also when the process is killed half-way. `synchronous=FULL` makes a committed
transaction survive a power cut, not only a crash of the process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL,
    spec         TEXT NOT NULL,                      -- the validated JobSpec as JSON
    output_name  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT,
    progress     TEXT NOT NULL DEFAULT '{}',
    result       TEXT NOT NULL DEFAULT '{}',
    pid          INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_output ON jobs (output_name, state);

CREATE TABLE IF NOT EXISTS job_events (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL,
    body    TEXT NOT NULL,                           -- a protocol JobEvent as JSON
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE IF NOT EXISTS datasets (
    id      TEXT PRIMARY KEY,
    record  TEXT NOT NULL                            -- a protocol DatasetRecord as JSON
);

CREATE TABLE IF NOT EXISTS adapters (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,                       -- lora | merged
    created_at  TEXT NOT NULL,
    record      TEXT NOT NULL                        -- a protocol AdapterRecord as JSON
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          TEXT PRIMARY KEY,
    body_sha256  TEXT NOT NULL,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    created_at   TEXT NOT NULL
);
"""


class Database:
    """Hands each thread its own connection to the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self.connection()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) in `transaction`.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; it takes the write lock at BEGIN, so reads inside are current."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def integrity_check(self) -> str:
        row = self.connection().execute("PRAGMA integrity_check").fetchone()
        return str(row[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
