"""Who may call, how much, and what they used: keys, limits and the ledger behind one object.

Opened in the app's lifespan and put on ``app.state.accounting`` (its parts also on
``app.state.keys``, ``.limiter`` and ``.ledger``). The proxy calls, in this order::

    acct: Accounting = request.app.state.accounting
    principal = acct.authenticate(request.headers.get("authorization"))  # 401, before the body
    model, variant = fleet.resolve(routed.model)
    acct.authorize(principal, model, variant)                            # 403 model_not_allowed
    await acct.admit(principal)                                          # 429 (+Retry-After), 503
    ... send to a replica, relay the answer ...
    acct.settle(principal, UsageRow(key=principal.name, model=model, variant=variant,
                replica=lease.replica.index, endpoint=call.endpoint, status=status,
                prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                latency_s=time.perf_counter() - call.started, ttft_s=...))  # once, in _finish

``settle`` is synchronous and never blocks or raises, so it belongs in ``Proxy._finish``
(also reached from a stream's ``finally`` when the client went away). It queues the ledger row
and charges ``prompt + completion`` tokens to the limiter in a task of its own, which the
request's cancellation cannot stop; ``close`` waits for those charges. Every key is charged,
limits or not, so a quota a reload adds counts what the key used before; the anonymous
principal of an open gateway is not. Requests refused before ``admit`` (401/403/429) should be
settled too if they are to appear in the ledger, with ``replica=None`` and zero tokens;
``settle`` skips the limiter when there are no tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.exceptions import RedisError

from gateway.errors import Forbidden
from gateway.keys import ANONYMOUS_NAME, KeyRing, Principal
from gateway.ledger import Ledger, UsageRow, open_store
from gateway.limits import Limiter, MemoryLimiter
from gateway.limits_redis import RedisLimiter
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class Accounting:
    def __init__(self, keys: KeyRing, limiter: Limiter, ledger: Ledger) -> None:
        self.keys = keys
        self.limiter = limiter
        self.ledger = ledger
        self._charges: set[asyncio.Task[None]] = set()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, keys: KeyRing, settings: GatewaySettings, cache_dir: Path, metrics: GatewayMetrics
    ) -> AsyncIterator[Accounting]:
        """Open the ledger, then the limiter; on exit settle charges, flush and close both."""
        url = settings.ledger_url.get_secret_value() if settings.ledger_url else None
        ledger = Ledger(
            await open_store(url, cache_dir),
            metrics,
            settings.ledger_batch_rows,
            settings.ledger_flush_interval_s,
            settings.ledger_max_pending,
        )
        ledger.start()
        try:
            limiter = await _open_limiter(settings, metrics, ledger)
            accounting = cls(keys, limiter, ledger)
            try:
                yield accounting
            finally:
                await accounting._wait_for_charges()
                await limiter.aclose()
        finally:
            await ledger.aclose()

    def authenticate(self, authorization: str | None) -> Principal:
        return self.keys.authenticate(authorization)

    def authorize(self, principal: Principal, model: str, variant: str) -> None:
        if not principal.allows(model, variant):
            raise Forbidden(
                f"The key {principal.name!r} may not use the model `{model}:{variant}`."
            )

    async def admit(self, principal: Principal) -> None:
        await self.limiter.check(principal)

    def settle(self, principal: Principal, row: UsageRow) -> None:
        """Record a finished request: queue its ledger row, charge its tokens. Never blocks."""
        self.ledger.record(row)
        tokens = row.prompt_tokens + row.completion_tokens
        if tokens > 0 and principal.name != ANONYMOUS_NAME:
            task = asyncio.get_running_loop().create_task(self.limiter.record(principal, tokens))
            self._charges.add(task)
            task.add_done_callback(self._charges.discard)

    async def _wait_for_charges(self) -> None:
        if self._charges:
            await asyncio.gather(*self._charges, return_exceptions=True)


async def _open_limiter(
    settings: GatewaySettings, metrics: GatewayMetrics, ledger: Ledger
) -> Limiter:
    if settings.redis_url is None:
        log.info("rate limits and quotas: in this process (quotas seeded from the ledger)")
        return MemoryLimiter(metrics, used_tokens=await ledger.tokens_by_key())
    limiter = RedisLimiter.from_url(settings.redis_url.get_secret_value(), metrics)
    try:
        await limiter.ping()
        await limiter.seed(await ledger.tokens_by_key())
    except RedisError as exc:
        await limiter.aclose()
        raise RuntimeError(f"QUANTGATE_REDIS_URL: Redis cannot be reached: {exc}") from exc
    log.info("rate limits and quotas: in Redis, shared by every gateway replica (quotas "
             "seeded from the ledger)")  # fmt: skip
    return limiter
