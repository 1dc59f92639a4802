"""The usage ledger on SQLite: exact sums, batching, flush on close, restarts, queries."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import InvalidRequest
from gateway.ledger import Ledger, UsageRow, open_store, parse_group_by
from gateway.metrics import GatewayMetrics

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def rows(n: int, start: datetime = T0) -> list[UsageRow]:
    """``n`` varied rows: keys a/b, two variants, some errors, streams with TTFT."""
    return [
        UsageRow(
            key="a" if i % 3 else "b",
            model="tiny",
            variant="gptq" if i % 2 else "base",
            replica=i % 2,
            endpoint="chat",
            status=200 if i % 10 else 503,
            prompt_tokens=7 + i % 5,
            completion_tokens=i % 13,
            latency_s=0.01 * (i % 7),
            ttft_s=0.005 if i % 4 == 0 else None,
            ts=start + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def expected(data: list[UsageRow], *group: str) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    out: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    for r in data:
        k = tuple({"key": r.key, "variant": r.variant, "replica": r.replica}[g] for g in group)
        n, p, c = out.get(k, (0, 0, 0))
        out[k] = (n + 1, p + r.prompt_tokens, c + r.completion_tokens)
    return out


def got(result: list[dict[str, Any]], *group: str) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    return {
        tuple(r[g] for g in group): (r["requests"], r["prompt_tokens"], r["completion_tokens"])
        for r in result
    }


async def open_ledger(url: str | None, cache: Path, **options: Any) -> Ledger:
    ledger = Ledger(await open_store(url, cache), GatewayMetrics(CollectorRegistry()), **options)
    ledger.start()
    return ledger


async def exercise(url: str | None, cache: Path) -> None:
    """Shared by the SQLite and PostgreSQL tests: exact sums, survive a restart, filters."""
    data = rows(1234)
    ledger = await open_ledger(url, cache)
    for row in data:
        ledger.record(row)
    await ledger.aclose()  # flushes all

    ledger = await open_ledger(url, cache)  # "restart": a new ledger on the same database
    total = await ledger.query([])
    assert total[0]["requests"] == len(data)
    assert total[0]["prompt_tokens"] == sum(r.prompt_tokens for r in data)
    assert total[0]["completion_tokens"] == sum(r.completion_tokens for r in data)
    assert total[0]["total_tokens"] == total[0]["prompt_tokens"] + total[0]["completion_tokens"]
    assert total[0]["errors"] == sum(r.status >= 400 for r in data)
    for group in (["key"], ["key", "variant"], ["variant", "replica"]):
        assert got(await ledger.query(group), *group) == expected(data, *group)
    since = T0 + timedelta(seconds=1000)
    later = [r for r in data if r.ts >= since]
    assert got(await ledger.query(["key"], since), "key") == expected(later, "key")
    window = await ledger.query([], T0 + timedelta(seconds=10), T0 + timedelta(seconds=20))
    assert window[0]["requests"] == 10
    ttft = [r.ttft_s for r in data if r.ttft_s is not None]
    assert total[0]["ttft_s_avg"] == pytest.approx(sum(ttft) / len(ttft))
    assert await ledger.tokens_by_key() == {
        k[0]: p + c for k, (_, p, c) in expected(data, "key").items()
    }
    ledger.record(data[0])  # the same row id again (a retried batch): written once
    await ledger.aclose()
    ledger = await open_ledger(url, cache)
    assert (await ledger.query([]))[0]["requests"] == len(data)
    await ledger.aclose()


def test_sqlite_ledger_is_exact_and_survives_restart(tmp_path: Path) -> None:
    asyncio.run(exercise(None, tmp_path))
    assert (tmp_path / "usage.sqlite3").exists()


def test_sqlite_is_in_wal_mode_and_stores_names_not_keys(tmp_path: Path) -> None:
    async def write() -> None:
        ledger = await open_ledger(f"sqlite:///{tmp_path}/u.db", tmp_path)
        ledger.record(rows(1)[0])
        await ledger.aclose()

    asyncio.run(write())
    db = sqlite3.connect(tmp_path / "u.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    (ts, key, replica, ttft) = db.execute(
        "SELECT ts, key_name, replica, ttft_s FROM quantgate_usage"
    ).fetchone()
    assert (ts, key, replica, ttft) == ("2026-11-01T12:00:00.000000+00:00", "b", 0, 0.005)


def test_record_never_waits_for_the_database_and_batches(tmp_path: Path) -> None:
    class SlowStore:
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def insert(self, batch: Any) -> None:
            await asyncio.sleep(0.05)
            self.batches.append(len(batch))

        async def query(self, *args: Any) -> list[dict[str, Any]]:
            return []

        async def aclose(self) -> None:
            pass

    async def scenario() -> None:
        store = SlowStore()
        ledger = Ledger(store, GatewayMetrics(CollectorRegistry()), batch_rows=100)
        ledger.start()
        started = time.perf_counter()
        for row in rows(1000):
            ledger.record(row)
        assert time.perf_counter() - started < 0.5
        await ledger.aclose()
        assert sum(store.batches) == 1000 and max(store.batches) <= 100
        assert len(store.batches) == 10

    asyncio.run(scenario())


def test_failed_writes_are_retried_and_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    class FlakyStore:
        def __init__(self) -> None:
            self.failures, self.rows = 2, 0

        async def insert(self, batch: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("disk on fire")
            self.rows += len(batch)

        async def query(self, *args: Any) -> list[dict[str, Any]]:
            return []

        async def aclose(self) -> None:
            pass

    async def scenario() -> None:
        store, registry = FlakyStore(), CollectorRegistry()
        ledger = Ledger(store, GatewayMetrics(registry), max_pending=50)
        ledger.start()
        for row in rows(60):
            ledger.record(row)
        await ledger.aclose()
        assert store.rows == 50
        sample = registry.get_sample_value
        assert sample("quantgate_ledger_rows_total", {"outcome": "dropped"}) == 10
        assert sample("quantgate_ledger_rows_total", {"outcome": "written"}) == 50
        assert sample("quantgate_ledger_write_errors_total") == 2
        ledger.record(rows(1)[0])  # after close: dropped, counted, no exception
        assert sample("quantgate_ledger_rows_total", {"outcome": "dropped"}) == 11

    asyncio.run(scenario())


def test_a_dead_database_cannot_hold_up_shutdown() -> None:
    class DeadStore:
        async def insert(self, batch: Any) -> None:
            raise OSError("gone")

        async def query(self, *args: Any) -> list[dict[str, Any]]:
            return []

        async def aclose(self) -> None:
            pass

    async def scenario() -> None:
        registry = CollectorRegistry()
        ledger = Ledger(DeadStore(), GatewayMetrics(registry), batch_rows=10)
        ledger.start()
        for row in rows(1000):
            ledger.record(row)
        started = time.perf_counter()
        await ledger.aclose()
        assert time.perf_counter() - started < 6
        dropped = registry.get_sample_value("quantgate_ledger_rows_total", {"outcome": "dropped"})
        assert dropped == 1000

    asyncio.run(scenario())


def test_group_by_is_validated() -> None:
    assert parse_group_by("key, model,,key,variant") == ["key", "model", "variant"]
    with pytest.raises(InvalidRequest, match="unknown column 'ts; DROP TABLE'") as info:
        parse_group_by("key,ts; DROP TABLE")
    assert info.value.param == "group_by"


def test_sqlite_write_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a limit test: prints rows/s so the README's number can be checked."""
    n = 20_000

    async def scenario() -> float:
        ledger, data = await open_ledger(None, tmp_path), rows(n)
        started = time.perf_counter()
        for row in data:
            ledger.record(row)
        await ledger.aclose()
        return n / (time.perf_counter() - started)

    rate = asyncio.run(scenario())
    with capsys.disabled():
        print(f"\nSQLite ledger: {rate:,.0f} rows/s")
    assert rate > 1000
