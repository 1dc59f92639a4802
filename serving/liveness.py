"""Whether a serving vLLM still answers: its ``/health`` asked at an interval.

A hung vLLM (a wedged engine, a stopped process) takes connections and never answers; its
process does not exit, so only asking tells. ``until_hung`` returns once ``failures`` probes in
a row (the manifest's ``serve.health_check``) went unanswered while the replica was ready to
serve (a replica asleep, waking or draining is not counted); the replica then treats it as a
crash (``serving.replica``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from serving.manifest.serve import HealthCheck


async def until_hung(url: str, probe: HealthCheck, serving: Callable[[], bool]) -> str:
    """Return, with what the last probe got, once ``url``'s ``/health`` went unanswered
    ``probe.failures`` times in a row while ``serving()`` held before and after each probe."""
    missed, why = 0, ""
    async with httpx.AsyncClient(timeout=probe.timeout_s) as client:
        while missed < probe.failures:
            await asyncio.sleep(probe.interval_s)
            if not serving():
                missed = 0
                continue
            status, why = await ask(client, url + "/health")
            missed = 0 if status == 200 or not serving() else missed + 1
    return f"/health went unanswered {missed} times in a row ({why})"


async def ask(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    """One probe of ``url``: its status (0: no answer within the client's timeout) and what it
    got, in words for a log line."""
    try:
        status = (await client.get(url)).status_code
    except httpx.HTTPError as exc:
        return 0, f"{type(exc).__name__} within {client.timeout.read:g} s"
    return status, f"answered {status}"
