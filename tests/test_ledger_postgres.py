"""The usage ledger on a real PostgreSQL server, started by the test (Debian's postgresql)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from test_ledger import exercise, open_ledger, rows

from services import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS quantgate_usage")
    return postgres.url


def test_postgres_ledger_is_exact_and_survives_restart(pg_url: str, tmp_path: Path) -> None:
    asyncio.run(exercise(pg_url, tmp_path))
    assert not (tmp_path / "usage.sqlite3").exists()


def test_two_gateways_share_one_postgres_ledger(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await open_ledger(pg_url, tmp_path), await open_ledger(pg_url, tmp_path)
        data = rows(400)
        for i, row in enumerate(data):
            (a if i % 2 else b).record(row)
        await asyncio.gather(a.aclose(), b.aclose())
        reader = await open_ledger(pg_url, tmp_path)
        total = (await reader.query([]))[0]
        assert total["requests"] == 400
        assert total["completion_tokens"] == sum(r.completion_tokens for r in data)
        await reader.aclose()

    asyncio.run(scenario())


def test_writer_reconnects_after_the_server_drops_it(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger = await open_ledger(pg_url, tmp_path)
        ledger.record(rows(1)[0])
        assert await ledger.flush()  # written: the writer holds its connection now
        with psycopg.connect(pg_url, autocommit=True) as admin:  # kill the writer's session
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
        for row in rows(50)[1:]:
            ledger.record(row)
        await ledger.aclose()
        errors = ledger._metrics.registry.get_sample_value("quantgate_ledger_write_errors_total")
        assert errors is not None and errors >= 1  # the dropped connection was seen, then retried
        reader = await open_ledger(pg_url, tmp_path)
        assert (await reader.query([]))[0]["requests"] == 50
        await reader.aclose()

    asyncio.run(scenario())
