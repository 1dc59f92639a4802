"""Per-key rate limits and token quotas: the Limiter protocol and its in-process implementation.

Every limit is a **sliding 60 s window log** (exact, no fixed-window burst at the boundary):

- ``requests_per_minute``: ``check`` admits a request while fewer than N were admitted in the
  last 60 s, and counts it.
- ``tokens_per_minute``: ``check`` admits while the tokens ``record``-ed in the last 60 s are
  below N. Tokens (prompt + completion) are known only when an answer ends, so requests in
  flight when the limit is reached can overshoot it by their own tokens.
- ``token_quota``: a lifetime total of prompt + completion tokens; ``check`` admits while the
  total is below it. An exhausted quota is a 429 without Retry-After: waiting does not help.

Every key's lifetime total is kept, whether or not it has a quota, so a ``token_quota`` that a
reload adds counts what the key used before. ``MemoryLimiter`` keeps this in the process (one
gateway replica); its totals are seeded from the usage ledger at start, so a restart does not
reset them. ``RedisLimiter`` (gateway/limits_redis.py) keeps it in Redis, shared by every
replica. A key without limits is admitted with no check (no state, no round trip); only its
tokens are added to its total once the answer ends. The anonymous principal of an open gateway
is not counted at all (``Accounting.settle``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import RateLimited
from gateway.keys import Principal
from gateway.metrics import GatewayMetrics

WINDOW_S = 60.0


class Limiter(Protocol):
    async def check(self, principal: Principal) -> None:
        """Admit one request or raise RateLimited (LimiterUnavailable if the store is down)."""

    async def record(self, principal: Principal, tokens: int) -> None:
        """Charge an answer's prompt + completion tokens to the key's lifetime total (whatever
        its limits) and to its token window if it has one. Never raises."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Verdict:
    """Why a request is refused; ``retry_after_s`` None for an exhausted quota."""

    reason: str  # requests | tokens | quota
    retry_after_s: float | None


def refuse(metrics: GatewayMetrics, principal: Principal, verdict: Verdict) -> RateLimited:
    """Count the refusal and build the error (shared by both limiters)."""
    metrics.rate_limited.labels(principal.name, verdict.reason).inc()
    if verdict.retry_after_s is None:
        message = (
            f"You exceeded the token quota of key {principal.name!r} "
            f"({principal.token_quota} tokens)."
        )
        return RateLimited(message, verdict.reason, None)
    retry = max(1, math.ceil(verdict.retry_after_s))
    limit = (
        f"{principal.requests_per_minute} requests"
        if verdict.reason == "requests"
        else f"{principal.tokens_per_minute} tokens"
    )
    message = (
        f"Rate limit reached for key {principal.name!r}: {limit} per minute. "
        f"Please try again in {retry}s."
    )
    return RateLimited(message, verdict.reason, retry)


@dataclass
class _Usage:
    admitted: deque[float] = field(default_factory=deque)  # times of admitted requests
    charged: deque[tuple[float, int]] = field(default_factory=deque)  # (time, tokens)
    window_tokens: int = 0
    total_tokens: int = 0

    def expire(self, before: float) -> None:
        while self.admitted and self.admitted[0] <= before:
            self.admitted.popleft()
        while self.charged and self.charged[0][0] <= before:
            self.window_tokens -= self.charged.popleft()[1]


class MemoryLimiter:
    """Sliding windows held in this process. Not shared: one gateway replica only."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        used_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self._metrics = metrics
        self._window = window_s
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        for name, tokens in (used_tokens or {}).items():
            self._usage[name] = _Usage(total_tokens=tokens)

    async def check(self, principal: Principal) -> None:
        if not principal.limited:
            return
        now = self._clock()
        usage = self._usage.setdefault(principal.name, _Usage())
        usage.expire(now - self._window)
        verdict = self._verdict(principal, usage, now)
        if verdict is not None:
            raise refuse(self._metrics, principal, verdict)
        if principal.requests_per_minute is not None:
            usage.admitted.append(now)

    async def record(self, principal: Principal, tokens: int) -> None:
        if tokens <= 0:
            return
        usage = self._usage.setdefault(principal.name, _Usage())
        usage.total_tokens += tokens
        if principal.tokens_per_minute is not None:
            usage.charged.append((self._clock(), tokens))
            usage.window_tokens += tokens

    async def aclose(self) -> None:
        self._usage.clear()

    def _verdict(self, principal: Principal, usage: _Usage, now: float) -> Verdict | None:
        quota, tpm, rpm = (
            principal.token_quota,
            principal.tokens_per_minute,
            principal.requests_per_minute,
        )
        if quota is not None and usage.total_tokens >= quota:
            return Verdict("quota", None)
        if tpm is not None and usage.window_tokens >= tpm:
            left = usage.window_tokens
            for at, tokens in usage.charged:  # oldest first: when does the sum drop below?
                left -= tokens
                if left < tpm:
                    return Verdict("tokens", at + self._window - now)
        if rpm is not None and len(usage.admitted) >= rpm:
            freeing = usage.admitted[len(usage.admitted) - rpm]
            return Verdict("requests", freeing + self._window - now)
        return None
