"""Accounting: the proxy's four calls, settle's charges, flush on close, quotas across restarts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from gateway.accounting import Accounting
from gateway.errors import Forbidden, RateLimited, Unauthorized
from gateway.keys import KeyRing
from gateway.ledger import UsageRow
from gateway.limits import MemoryLimiter
from gateway.limits_redis import RedisLimiter
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from services import RedisServer
from serving.manifest import ApiKey, Auth

SECRET = "sk-acct-93d1"
QUOTA = 100


def keyring(quota: int | None = QUOTA) -> KeyRing:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    key = ApiKey(name="team", key_sha256=digest, models=("tiny:gptq",), token_quota=quota)
    return KeyRing.from_auth(Auth(keys=(key,)))


def row(prompt: int, completion: int, status: int = 200) -> UsageRow:
    return UsageRow("team", "tiny", "gptq", 0, "chat", status, prompt, completion, 0.2, 0.01)


def accounting(tmp_path: Path, keys: KeyRing | None = None, **settings: Any) -> Any:
    metrics = GatewayMetrics(CollectorRegistry())
    return Accounting.open(keys or keyring(), GatewaySettings(**settings), tmp_path, metrics)


def test_calls_in_order_then_quota_survives_a_restart_without_redis(tmp_path: Path) -> None:
    async def first_run() -> None:
        async with accounting(tmp_path) as acct:
            assert isinstance(acct.limiter, MemoryLimiter)
            with pytest.raises(Unauthorized):
                acct.authenticate("Bearer sk-nope")
            principal = acct.authenticate(f"Bearer {SECRET}")
            with pytest.raises(Forbidden, match="may not use the model `tiny:base`"):
                acct.authorize(principal, "tiny", "base")
            acct.authorize(principal, "tiny", "gptq")
            for _ in range(3):
                await acct.admit(principal)
                acct.settle(principal, row(20, 15))  # 105 tokens: quota spent
            await asyncio.sleep(0)  # let the charges run
            with pytest.raises(RateLimited) as info:
                await acct.admit(principal)
            assert info.value.reason == "quota"

    async def second_run() -> None:
        async with accounting(tmp_path) as acct:
            principal = acct.authenticate(f"Bearer {SECRET}")
            with pytest.raises(RateLimited):  # seeded from the ledger
                await acct.admit(principal)
            totals = await acct.ledger.query(["key"])
            assert totals == [
                {
                    "key": "team",
                    "requests": 3,
                    "errors": 0,
                    "prompt_tokens": 60,
                    "completion_tokens": 45,
                    "total_tokens": 105,
                    "latency_s_avg": pytest.approx(0.2),
                    "ttft_s_avg": pytest.approx(0.01),
                }
            ]

    asyncio.run(first_run())
    asyncio.run(second_run())


def test_close_flushes_every_row_settled_just_before(tmp_path: Path) -> None:
    async def run() -> None:
        async with accounting(tmp_path, ledger_flush_interval_s=5.0) as acct:
            principal = acct.authenticate(f"Bearer {SECRET}")
            for i in range(250):
                acct.settle(principal, row(1, i % 3, 200 if i % 50 else 500))
        async with accounting(tmp_path) as acct:
            [total] = await acct.ledger.query([])
            assert (total["requests"], total["errors"]) == (250, 5)
            assert total["completion_tokens"] == sum(i % 3 for i in range(250))

    asyncio.run(run())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_redis_url_selects_the_shared_limiter(tmp_path: Path, redis_server: RedisServer) -> None:
    async def run() -> None:
        async with accounting(tmp_path, redis_url=SecretStr(redis_server.url)) as acct:
            assert isinstance(acct.limiter, RedisLimiter)
            principal = acct.authenticate(f"Bearer {SECRET}")
            acct.settle(principal, row(60, 40))
        async with accounting(tmp_path, redis_url=SecretStr(redis_server.url)) as acct:
            assert isinstance(acct.limiter, RedisLimiter)
            assert await acct.limiter.used_tokens("team") == 100  # charged before close
            with pytest.raises(RateLimited):
                await acct.admit(acct.authenticate(f"Bearer {SECRET}"))

    asyncio.run(run())


def test_unreachable_redis_stops_the_start_without_leaking_the_url(tmp_path: Path) -> None:
    async def run() -> None:
        async with accounting(tmp_path, redis_url=SecretStr("redis://:hunter2@127.0.0.1:1/0")):
            pass

    with pytest.raises(RuntimeError, match="Redis cannot be reached") as info:
        asyncio.run(run())
    assert "hunter2" not in str(info.value)


def test_a_quota_added_by_a_reload_counts_what_the_key_used_before(tmp_path: Path) -> None:
    async def run() -> None:
        async with accounting(tmp_path, keyring(quota=None)) as acct:
            principal = acct.authenticate(f"Bearer {SECRET}")
            await acct.admit(principal)
            acct.settle(principal, row(60, 45))  # no limits: counted all the same
            await asyncio.sleep(0)  # let the charge run
            acct.keys.replace(keyring(quota=QUOTA))  # what a reload does
            with pytest.raises(RateLimited) as info:
                await acct.admit(acct.authenticate(f"Bearer {SECRET}"))
            assert info.value.reason == "quota"

    asyncio.run(run())


def test_redis_counts_usage_from_before_it_was_used(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def run() -> None:
        async with accounting(tmp_path, keyring(quota=None)) as acct:  # no Redis, no quota
            acct.settle(acct.authenticate(f"Bearer {SECRET}"), row(60, 45))
        redis_url = SecretStr(redis_server.url)
        async with accounting(tmp_path, keyring(quota=QUOTA), redis_url=redis_url) as acct:
            assert await acct.limiter.used_tokens("team") == 105  # seeded from the ledger
            with pytest.raises(RateLimited) as info:
                await acct.admit(acct.authenticate(f"Bearer {SECRET}"))
            assert info.value.reason == "quota"

    asyncio.run(run())
