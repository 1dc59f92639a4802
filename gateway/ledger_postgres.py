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

from gateway.ledger import UsageRow, aggregate_sql

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
INSERT = (
    "INSERT INTO quantgate_usage (id, ts, key_name, model, variant, replica, endpoint, status, "
    "prompt_tokens, completion_tokens, latency_s, ttft_s) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
)


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
        params = [
            (r.id, _utc(r.ts), r.key, r.model, r.variant, r.replica, r.endpoint, r.status,
             r.prompt_tokens, r.completion_tokens, r.latency_s, r.ttft_s)
            for r in rows
        ]  # fmt: skip
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
        clauses, params = [], []
        if since is not None:
            clauses.append("ts >= %s")
            params.append(_utc(since))
        if until is not None:
            clauses.append("ts < %s")
            params.append(_utc(until))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
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
