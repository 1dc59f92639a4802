"""The ledger in PostgreSQL (psycopg 3, async): for several gateway replicas on several hosts.

The writer keeps one connection and reconnects after a failure; each batch is one transaction
(``executemany``, pipelined by psycopg). Queries open their own short-lived connection so a
report never runs inside the writer's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.ledger import UsageRow, aggregate_sql, insert_params, insert_sql, window_sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS quantgate_usage (
    id TEXT PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    replica INTEGER,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_s DOUBLE PRECISION NOT NULL,
    ttft_s DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS quantgate_usage_ts ON quantgate_usage (ts);
"""
INSERT = insert_sql("%s")


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


class PostgresStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        store = cls(url)
        conn = await store._connection()
        async with conn.transaction():
            await conn.execute(SCHEMA)
        return store

    async def insert(self, rows: Sequence[UsageRow]) -> None:
        params = [insert_params(r, _utc(r.ts)) for r in rows]
        conn = await self._connection()
        try:
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(INSERT, params)
        except psycopg.OperationalError:
            await self.aclose()  # the next attempt reconnects
            raise

    async def query(
        self, group_by: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        where, params = window_sql(since, until, "%s", _utc)
        async with await psycopg.AsyncConnection.connect(self._url, row_factory=dict_row) as conn:
            cursor = await conn.execute(aggregate_sql(group_by, where), params)
            return await cursor.fetchall()

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._url, connect_timeout=10)
        return self._conn
