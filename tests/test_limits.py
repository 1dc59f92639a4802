"""MemoryLimiter: sliding windows on an injected clock, quota seeded from the ledger."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import RateLimited
from gateway.keys import ANONYMOUS, Principal
from gateway.limits import MemoryLimiter
from gateway.metrics import GatewayMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, used: dict[str, int] | None = None) -> MemoryLimiter:
    return MemoryLimiter(GatewayMetrics(CollectorRegistry()), clock=clock, used_tokens=used)


def refused(limiter: MemoryLimiter, principal: Principal) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        asyncio.run(limiter.check(principal))
    return info.value


def test_requests_per_minute_slides() -> None:
    clock, key = Clock(), Principal("a", requests_per_minute=3)
    lim = make(clock)
    for step in (0, 10, 20):
        clock.now = 1000 + step
        asyncio.run(lim.check(key))
    clock.now = 1030
    err = refused(lim, key)
    assert (err.reason, err.retry_after_s) == ("requests", 30)  # the t=0 request frees at 60
    clock.now = 1060
    asyncio.run(lim.check(key))  # t=0 expired: 10, 20, 60 now
    clock.now = 1061
    assert refused(lim, key).retry_after_s == 9  # t=10 frees at 70


def test_refused_requests_do_not_count() -> None:
    clock, key = Clock(), Principal("a", requests_per_minute=1)
    lim = make(clock)
    asyncio.run(lim.check(key))
    for _ in range(5):
        refused(lim, key)
    clock.now += 60
    asyncio.run(lim.check(key))


def test_tokens_per_minute_and_retry_after() -> None:
    clock, key = Clock(), Principal("t", tokens_per_minute=100)
    lim = make(clock)
    asyncio.run(lim.record(key, 70))
    clock.now += 20
    asyncio.run(lim.check(key))  # 70 < 100
    asyncio.run(lim.record(key, 50))
    err = refused(lim, key)
    assert err.reason == "tokens"
    assert err.retry_after_s == 40  # dropping the first 70 brings 120 below 100
    clock.now += 40
    asyncio.run(lim.check(key))


def test_quota_counts_every_token_and_is_seeded() -> None:
    clock, key = Clock(), Principal("q", token_quota=100)
    lim = make(clock, used={"q": 90})
    asyncio.run(lim.check(key))
    asyncio.run(lim.record(key, 10))
    err = refused(lim, key)
    assert (err.reason, err.retry_after_s) == ("quota", None)
    clock.now += 3600
    refused(lim, key)


def test_refusals_are_counted_by_key_and_reason() -> None:
    clock, key = Clock(), Principal("m", requests_per_minute=1)
    lim = make(clock)
    asyncio.run(lim.check(key))
    refused(lim, key)
    refused(lim, key)
    value = lim._metrics.registry.get_sample_value(
        "quantgate_rate_limited_total", {"key": "m", "reason": "requests"}
    )
    assert value == 2


def test_unlimited_keys_are_admitted_without_state() -> None:
    lim = make(Clock())
    for _ in range(1000):
        asyncio.run(lim.check(ANONYMOUS))
        asyncio.run(lim.check(Principal("free")))
    assert lim._usage == {}


def test_a_quota_added_later_counts_what_the_key_used_before() -> None:
    clock = Clock()
    lim = make(clock, used={"late": 50})  # from the ledger, before this process
    free, limited = Principal("late"), Principal("late", token_quota=100)
    asyncio.run(lim.check(free))
    asyncio.run(lim.record(free, 40))  # no limits yet: still counted
    asyncio.run(lim.check(limited))  # a reload added the quota: 90 of 100 used
    asyncio.run(lim.record(limited, 10))
    assert refused(lim, limited).reason == "quota"
