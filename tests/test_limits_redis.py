"""RedisLimiter against a real redis-server: two limiters (two gateway replicas) share one limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.keys import Principal
from gateway.limits_redis import RedisLimiter
from gateway.metrics import GatewayMetrics
from services import RedisServer

ALICE = Principal("alice", requests_per_minute=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    async def flush() -> None:
        client = Redis.from_url(redis_server.url)
        await client.flushdb()
        await client.aclose()

    asyncio.run(flush())
    return redis_server.url


def limiter(url: str, window_s: float = 60.0) -> RedisLimiter:
    return RedisLimiter.from_url(url, GatewayMetrics(CollectorRegistry()), window_s)


async def _admitted(lim: RedisLimiter, principal: Principal) -> bool:
    try:
        await lim.check(principal)
    except RateLimited:
        return False
    return True


def test_two_replicas_enforce_one_request_limit(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = limiter(redis_url), limiter(redis_url)
        for lim in (a, b, a, b, a):
            await lim.check(ALICE)
        with pytest.raises(RateLimited) as info:
            await b.check(ALICE)
        assert info.value.reason == "requests"
        assert info.value.retry_after_s is not None and 55 <= info.value.retry_after_s <= 60
        assert (
            b._metrics.registry.get_sample_value(
                "quantgate_rate_limited_total", {"key": "alice", "reason": "requests"}
            )
            == 1
        )
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_concurrent_checks_from_two_replicas_admit_exactly_the_limit(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = limiter(redis_url), limiter(redis_url)
        key = Principal("burst", requests_per_minute=10)
        results = await asyncio.gather(*(_admitted(lim, key) for lim in [a, b] * 20))
        assert sum(results) == 10
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_tokens_per_minute_is_shared(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = limiter(redis_url), limiter(redis_url)
        key = Principal("bob", tokens_per_minute=100)
        await a.check(key)
        await a.record(key, 60)
        await b.check(key)  # 60 < 100
        await b.record(key, 40)
        with pytest.raises(RateLimited) as info:
            await a.check(key)
        assert info.value.reason == "tokens"
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 55
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_windows_slide(redis_url: str) -> None:
    async def scenario() -> None:
        lim = limiter(redis_url, window_s=1.0)
        rpm = Principal("fast", requests_per_minute=2)
        tpm = Principal("tok", tokens_per_minute=10)
        await lim.check(rpm)
        await lim.check(rpm)
        await lim.record(tpm, 10)
        assert not await _admitted(lim, rpm)
        assert not await _admitted(lim, tpm)
        await asyncio.sleep(1.1)
        assert await _admitted(lim, rpm)
        assert await _admitted(lim, tpm)
        await lim.aclose()

    asyncio.run(scenario())


def test_quota_persists_across_limiters_and_has_no_retry_after(redis_url: str) -> None:
    key = Principal("carol", token_quota=1000)

    async def spend() -> None:
        lim = limiter(redis_url)
        await lim.check(key)
        await lim.record(key, 999)
        await lim.check(key)
        await lim.record(key, 5)
        await lim.aclose()

    async def after_restart() -> None:
        lim = limiter(redis_url)
        assert await lim.used_tokens("carol") == 1004
        with pytest.raises(RateLimited) as info:
            await lim.check(key)
        assert info.value.reason == "quota" and info.value.retry_after_s is None
        await lim.aclose()

    asyncio.run(spend())
    asyncio.run(after_restart())


def test_unlimited_keys_are_admitted_without_redis() -> None:
    async def scenario() -> None:
        lim = limiter("redis://127.0.0.1:1/0")  # nothing listens there
        for _ in range(100):
            await lim.check(Principal("free"))
        await lim.aclose()

    asyncio.run(scenario())


def test_a_quota_added_later_counts_what_the_key_used_before(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = limiter(redis_url), limiter(redis_url)
        await a.record(Principal("late"), 60)  # no limits yet: still counted
        await b.record(Principal("late", tokens_per_minute=1000), 30)
        limited = Principal("late", token_quota=100)
        await b.check(limited)  # a reload added the quota: 90 of 100 used
        await a.record(limited, 10)
        with pytest.raises(RateLimited) as info:
            await b.check(limited)
        assert info.value.reason == "quota"
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_seed_raises_the_lifetime_counter_to_the_ledger_and_never_lowers_it(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        lim = limiter(redis_url)
        await lim.seed({"dave": 500, "erin": 7})  # nothing in Redis yet: the ledger's totals
        assert (await lim.used_tokens("dave"), await lim.used_tokens("erin")) == (500, 7)
        await lim.record(Principal("dave"), 20)
        await lim.seed({"dave": 500})  # the ledger lags: Redis keeps its own count
        assert await lim.used_tokens("dave") == 520
        await lim.seed({"dave": 900})  # Redis lost counts the ledger has
        assert await lim.used_tokens("dave") == 900
        await lim.aclose()

    asyncio.run(scenario())


def test_unreachable_redis_refuses_with_503_error_and_record_does_not_raise() -> None:
    async def scenario() -> None:
        lim = limiter("redis://127.0.0.1:1/0")
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await lim.check(ALICE)
        await lim.record(Principal("q", token_quota=5), 3)
        assert time.monotonic() - started < 10
        await lim.aclose()

    asyncio.run(scenario())


def test_keys_are_hash_tagged_per_key_name(redis_url: str) -> None:
    async def scenario() -> None:
        lim = limiter(redis_url)
        await lim.check(ALICE)
        await lim.record(Principal("alice", tokens_per_minute=5, token_quota=9), 3)
        client = Redis.from_url(redis_url)
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("*"))
        assert keys == [
            "quantgate:{alice}:req",
            "quantgate:{alice}:tok",
            "quantgate:{alice}:toksum",
            "quantgate:{alice}:used",
        ]
        assert await client.pttl("quantgate:{alice}:req") > 0
        assert await client.ttl("quantgate:{alice}:used") == -1
        await client.aclose()
        await lim.aclose()

    asyncio.run(scenario())


def test_missing_redis_server_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="redis-server is not installed"):
        RedisServer(tmp_path)
