"""The ledger in SQLite: WAL mode, one connection on one worker thread, off the event loop.

WAL lets readers (``/admin/usage``, the ``sqlite3`` shell) run while the gateway writes, and
several gateway processes on one host may share the file (``busy_timeout``). Each batch is one
transaction with ``synchronous=FULL``: a batch that was written survives a power cut.
Timestamps are stored as ISO 8601 UTC text with microseconds, which sorts as time does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.ledger import UsageRow, aggregate_sql, insert_params, insert_sql, window_sql

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS quantgate_usage (
    id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    replica INTEGER,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    ttft_s REAL
);
CREATE INDEX IF NOT EXISTS quantgate_usage_ts ON quantgate_usage (ts);
"""
INSERT = insert_sql("?")


def iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        store = cls(path)
        await store._call(store._connect)
        return store

    async def insert(self, rows: Sequence[UsageRow]) -> None:
        await self._call(self._insert, rows)

    async def query(
        self, group_by: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        return await self._call(self._query, group_by, since, until)

    async def aclose(self) -> None:
        await self._call(self._close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(SCHEMA)
        self._conn = conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the SQLite ledger is closed")
        return self._conn

    def _insert(self, rows: Sequence[UsageRow]) -> None:
        params = [insert_params(r, iso(r.ts)) for r in rows]
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(INSERT, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _query(
        self, group_by: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        where, params = window_sql(since, until, "?", iso)
        cursor = self._db().execute(aggregate_sql(group_by, where), params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
