"""The metering ledger: one row per request, written to a database off the request path.

``Ledger.record`` puts a row on an in-memory queue and returns at once; a background task
writes the queue in batches (up to ``batch_rows`` rows, at most ``flush_interval_s`` after the
first one waits) to SQLite (WAL mode, the default: ``<cache_dir>/usage.sqlite3``) or
PostgreSQL (``QUANTGATE_LEDGER_URL=postgresql://...``). ``aclose`` writes every queued row
before it returns, so a graceful restart loses none; a killed process loses what was queued
(at most about ``flush_interval_s`` of traffic).

A full queue (``max_pending`` rows: the database has been failing for a long time) drops new
rows and counts them in ``quantgate_ledger_rows_total{outcome="dropped"}`` rather than block
requests or grow without bound. A failed batch is retried with backoff, and every row carries
an id that the database keeps unique, so a retry after an unseen commit writes no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import InvalidRequest
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# What /admin/usage may group by, and the column each name is stored in.
GROUP_COLUMNS = {
    "key": "key_name",
    "model": "model",
    "variant": "variant",
    "replica": "replica",
    "endpoint": "endpoint",
    "status": "status",
}
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
AVERAGES = ("latency_s_avg", "ttft_s_avg")
CLOSE_ATTEMPTS = 5


@dataclass(frozen=True)
class UsageRow:
    """One request as metered: the key's manifest name, never the key."""

    key: str
    model: str
    variant: str
    replica: int | None  # index of the replica that answered; None if none was reached
    endpoint: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None = None  # streams only
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class LedgerStore(Protocol):
    async def insert(self, rows: Sequence[UsageRow]) -> None:
        """Write rows in one transaction; rows whose id is already stored are skipped."""

    async def query(
        self, group_by: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        """Sums (SUMS) and means (AVERAGES) per group; ``group_by`` names from GROUP_COLUMNS."""

    async def aclose(self) -> None: ...


async def open_store(url: str | None, cache_dir: Path) -> LedgerStore:
    """``postgresql://...``, ``sqlite:///path`` or None (``<cache_dir>/usage.sqlite3``)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        from gateway.ledger_postgres import PostgresStore

        return await PostgresStore.open(url)
    from gateway.ledger_sqlite import SQLiteStore

    if url is None:
        return await SQLiteStore.open(cache_dir / "usage.sqlite3")
    if url.startswith("sqlite:///"):
        return await SQLiteStore.open(Path(url.removeprefix("sqlite:///")))
    raise ValueError("QUANTGATE_LEDGER_URL must start with postgresql:// or sqlite:///")


INSERT_COLUMNS = (
    "id, ts, key_name, model, variant, replica, endpoint, status, "
    "prompt_tokens, completion_tokens, latency_s, ttft_s"
)


def insert_sql(placeholder: str) -> str:
    """The one insert both stores run, with their DB-API placeholder (``?`` or ``%s``)."""
    values = ", ".join([placeholder] * len(INSERT_COLUMNS.split(",")))
    return (
        f"INSERT INTO quantgate_usage ({INSERT_COLUMNS}) VALUES ({values}) "
        "ON CONFLICT (id) DO NOTHING"
    )


def insert_params(row: UsageRow, ts: Any) -> tuple[Any, ...]:
    """A row's values in ``INSERT_COLUMNS`` order, its timestamp as the store keeps it."""
    return (
        row.id, ts, row.key, row.model, row.variant, row.replica, row.endpoint, row.status,
        row.prompt_tokens, row.completion_tokens, row.latency_s, row.ttft_s,
    )  # fmt: skip


def window_sql(
    since: datetime | None, until: datetime | None, placeholder: str, ts: Callable[[datetime], Any]
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (or "") and its parameters for ``since <= ts < until``."""
    clauses, params = [], []
    if since is not None:
        clauses.append(f"ts >= {placeholder}")
        params.append(ts(since))
    if until is not None:
        clauses.append(f"ts < {placeholder}")
        params.append(ts(until))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def aggregate_sql(group_by: Sequence[str], where: str) -> str:
    """The one aggregation both stores run (their placeholders are in ``where``)."""
    columns = [f"{GROUP_COLUMNS[name]} AS {name}" for name in group_by]
    keys = ", ".join(GROUP_COLUMNS[name] for name in group_by)
    select = ", ".join(
        [
            *columns,
            "COUNT(*) AS requests",
            "CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors",
            "CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens",
            "CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens",
            "CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS total_tokens",
            "AVG(latency_s) AS latency_s_avg",
            "AVG(ttft_s) AS ttft_s_avg",
        ]
    )
    grouping = f" GROUP BY {keys} ORDER BY {keys}" if group_by else ""
    return f"SELECT {select} FROM quantgate_usage{where}{grouping}"


def parse_group_by(value: str) -> list[str]:
    """``"key,model"`` -> ``["key", "model"]``; raise InvalidRequest on an unknown name."""
    names: list[str] = []
    for name in (part.strip() for part in value.split(",")):
        if not name or name in names:
            continue
        if name not in GROUP_COLUMNS:
            allowed = ", ".join(GROUP_COLUMNS)
            raise InvalidRequest(
                f"group_by: unknown column {name!r} (allowed: {allowed})", param="group_by"
            )
        names.append(name)
    return names


class Ledger:
    """Queues rows without blocking; a background task writes them in batches."""

    def __init__(
        self,
        store: LedgerStore,
        metrics: GatewayMetrics,
        batch_rows: int = 500,
        flush_interval_s: float = 0.1,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._batch_rows = batch_rows
        self._interval = flush_interval_s
        self._max_pending = max_pending
        self._queue: asyncio.Queue[UsageRow | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()  # ends a batch's gathering wait at once
        self._failures_closing = 0  # failed writes since aclose began

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    def record(self, row: UsageRow) -> None:
        """Queue a row; never blocks. Drops (and counts) it only if the queue is full."""
        if self._closing or self._queue.qsize() >= self._max_pending:
            self._metrics.ledger_rows.labels("dropped").inc()
            log.error("usage row dropped (%s): key %r, model %s:%s", self._why(), row.key,
                      row.model, row.variant)  # fmt: skip
            return
        self._queue.put_nowait(row)
        self._metrics.ledger_queue.set(self._queue.qsize())

    async def query(
        self, group_by: Sequence[str], since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        unknown = [name for name in group_by if name not in GROUP_COLUMNS]
        if unknown:
            raise InvalidRequest(f"group_by: unknown column {unknown[0]!r}", param="group_by")
        return await self._store.query(group_by, since, until)

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every row queued so far is written; False if that took too long."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def tokens_by_key(self) -> dict[str, int]:
        """Lifetime prompt + completion tokens of every key name (seeds in-memory quotas)."""
        return {str(row["key"]): int(row["total_tokens"]) for row in await self.query(["key"])}

    async def aclose(self) -> None:
        """Write every queued row, stop the writer, close the store."""
        if not self._closing:
            self._closing = True
            self._closed.set()
            self._queue.put_nowait(None)
            if self._writer is not None:
                await self._writer
            await self._store.aclose()

    def _why(self) -> str:
        return "ledger closed" if self._closing else f"{self._max_pending} rows already queued"

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            if self._queue.qsize() < self._batch_rows - 1 and not self._closing:
                with contextlib.suppress(TimeoutError):  # let a batch gather
                    await asyncio.wait_for(self._closed.wait(), self._interval)
            batch, stop = [first], False
            while len(batch) < self._batch_rows and not self._queue.empty():
                row = self._queue.get_nowait()
                if row is None:
                    self._queue.task_done()
                    stop = True
                    break
                batch.append(row)
            await self._write(batch)
            for _ in batch:
                self._queue.task_done()
            self._metrics.ledger_queue.set(self._queue.qsize())
            if stop:
                return

    async def _write(self, batch: list[UsageRow]) -> None:
        """Retry with backoff until written; while closing, give up after CLOSE_ATTEMPTS
        failures in all (then every row left is dropped at once, so a stop stays short)."""
        delay = 0.1
        while self._failures_closing < CLOSE_ATTEMPTS:
            try:
                await self._store.insert(batch)
            except Exception as exc:  # any driver's error: keep the rows and try again
                self._metrics.ledger_write_errors.inc()
                if self._closing:
                    self._failures_closing += 1
                log.warning("usage ledger: writing %d rows failed (%r); retrying", len(batch), exc)
                await asyncio.sleep(min(delay, 1.0) if self._closing else delay)
                delay = min(delay * 2, 5.0)
            else:
                self._metrics.ledger_rows.labels("written").inc(len(batch))
                return
        self._metrics.ledger_rows.labels("dropped").inc(len(batch))
        log.error("usage ledger: %d rows lost at shutdown: the database keeps failing", len(batch))
