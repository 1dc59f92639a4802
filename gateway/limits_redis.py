"""Rate limits and quotas in Redis, shared by every gateway replica.

Same sliding 60 s window log as gateway/limits.py, done atomically in Lua scripts (one round
trip per check and per record) with Redis's own clock (``TIME``), so replicas with skewed
clocks still agree. Keys per API key name ``N`` (hash-tagged, so they share a cluster slot):

- ``{prefix}:{N}:req``: sorted set of admitted requests (score: ms; expires with the window)
- ``{prefix}:{N}:tok``: sorted set of charges ``<id>:<tokens>`` (score: ms), and
  ``{prefix}:{N}:toksum`` their running sum (both expire with the window)
- ``{prefix}:{N}:used``: lifetime tokens, for the quota (never expires). Counted for every key,
  limits or not, so a quota a reload adds counts what the key used before; ``seed`` raises it
  to the ledger's total at start (never lowers it), so usage from before Redis was used, or
  lost with Redis's data, still counts.

If Redis cannot be reached, ``check`` raises LimiterUnavailable (503): requests are refused
rather than let through unlimited. ``record`` logs the failure and goes on (the ledger still
has the usage).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import LimiterUnavailable
from gateway.keys import Principal
from gateway.limits import WINDOW_S, Verdict, refuse
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: req, tok, toksum, used. ARGV: window_ms, rpm, tpm, quota (-1: none), request id.
# Returns {reason, retry_after_ms}: reason 'ok', 'requests', 'tokens' or 'quota'.
CHECK = (
    _NOW_MS
    + """
local window = tonumber(ARGV[1])
local rpm, tpm, quota = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if quota >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= quota then
  return {'quota', -1}
end
if tpm >= 0 then
  local sum = tonumber(redis.call('GET', KEYS[3]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    if redis.call('EXISTS', KEYS[2]) == 0 then
      sum = 0
      redis.call('DEL', KEYS[3])
    else
      redis.call('SET', KEYS[3], sum, 'KEEPTTL')
    end
  end
  if sum >= tpm then
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      sum = sum - tonumber(string.match(entries[i], ':(%d+)$'))
      if sum < tpm then return {'tokens', tonumber(entries[i + 1]) + window - now} end
    end
    return {'tokens', window}
  end
end
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local freeing = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {'requests', tonumber(freeing[2]) + window - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
end
return {'ok', 0}
"""
)

# KEYS: tok, toksum, used. ARGV: window_ms, tokens, charge id, track window (1/0).
RECORD = (
    _NOW_MS
    + """
local window, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. tokens)
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
end
redis.call('INCRBY', KEYS[3], tokens)
return 1
"""
)

# KEYS: used. ARGV: the ledger's total. Raise the counter to it, never lower it.
SEED = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


class RedisLimiter:
    """Limits shared through Redis; two instances on one Redis enforce one limit together."""

    def __init__(
        self,
        client: Redis,
        metrics: GatewayMetrics,
        window_s: float = WINDOW_S,
        prefix: str = "quantgate",
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._window_ms = int(window_s * 1000)
        self._prefix = prefix
        self._check = client.register_script(CHECK)
        self._record = client.register_script(RECORD)
        self._seed = client.register_script(SEED)

    @classmethod
    def from_url(
        cls,
        url: str,
        metrics: GatewayMetrics,
        window_s: float = WINDOW_S,
        prefix: str = "quantgate",
    ) -> RedisLimiter:
        client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, metrics, window_s, prefix)

    async def check(self, principal: Principal) -> None:
        if not principal.limited:
            return
        args: list[int | str] = [
            self._window_ms,
            _or_none(principal.requests_per_minute),
            _or_none(principal.tokens_per_minute),
            _or_none(principal.token_quota),
            uuid.uuid4().hex,
        ]
        try:
            reason, retry_ms = await self._check(keys=self._keys(principal.name), args=args)
        except RedisError as exc:
            raise LimiterUnavailable(f"the rate-limit store is unavailable: {exc}") from exc
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        if reason != "ok":
            retry_s = None if reason == "quota" else int(retry_ms) / 1000
            raise refuse(self._metrics, principal, Verdict(reason, retry_s))

    async def record(self, principal: Principal, tokens: int) -> None:
        if tokens <= 0:
            return
        window = principal.tokens_per_minute is not None
        args: list[int | str] = [self._window_ms, tokens, uuid.uuid4().hex, int(window)]
        try:
            await self._record(keys=self._keys(principal.name)[1:], args=args)
        except RedisError as exc:
            log.error(
                "could not charge %d tokens to key %r in Redis: %s", tokens, principal.name, exc
            )

    async def ping(self) -> None:
        await self._client.ping()

    async def seed(self, used_tokens: Mapping[str, int]) -> None:
        """Raise each key's lifetime counter to its total in the ledger (never lower it: the
        counter may hold charges whose rows are not written yet, or another replica's)."""
        for name, tokens in used_tokens.items():
            await self._seed(keys=self._keys(name)[3:], args=[tokens])

    async def used_tokens(self, name: str) -> int:
        """Lifetime tokens charged to a key (its quota counter)."""
        value = await self._client.get(self._keys(name)[3])
        return int(value or 0)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _keys(self, name: str) -> list[str]:
        base = f"{self._prefix}:{{{name}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:toksum", f"{base}:used"]


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit
