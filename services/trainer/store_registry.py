"""The registries in SQLite: uploaded datasets (`datasets`) and trained adapters and merged
models (`adapters`), each row a protocol record as JSON.

An adapter is registered by `insert_adapter` inside the transaction that marks its job
succeeded (store.py's `finish_job`): a listed adapter always has a succeeded job.
"""

from __future__ import annotations

import sqlite3

from protocol.adapters import AdapterRecord
from protocol.datasets import DatasetRecord
from services.trainer.core.db import Database
from services.trainer.store_rows import adapter_from_row


class Registry:
    """Datasets and adapters, part of `Store`."""

    db: Database

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
        """Register an adapter or merged model; call inside the caller's transaction."""
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
        return adapter_from_row(row) if row else None

    def list_adapters(self, kind: str | None = None) -> list[AdapterRecord]:
        conn = self.db.connection()
        columns = "SELECT name, kind, created_at, record FROM adapters"
        if kind is None:
            rows = conn.execute(f"{columns} ORDER BY created_at, name")
        else:
            rows = conn.execute(f"{columns} WHERE kind=? ORDER BY created_at, name", (kind,))
        return [record for r in rows if (record := adapter_from_row(r)) is not None]
