"""An upstream that is already running (``upstream.url`` in the manifest), as a replica.

With ``upstream.health_path`` it is asked that path every ``serve.health_check.interval_s``
while the gateway uses it; ``failures`` unanswered asks in a row (no 2xx within ``timeout_s``)
take it out of routing, so requests get a 503 at once (or the model's fallback) instead of each
waiting out a timeout on a hung server, and the first answered ask puts it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from serving.errors import BackendFailed
from serving.liveness import ask
from serving.manifest import HealthCheck, Upstream
from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable

log = logging.getLogger("serving.replica")
MODELS_RETRY_S = 10.0  # an upstream whose /v1/models could not be read is asked again after


class StaticReplica(Replica):
    """An upstream that is already running: never started or stopped; routable unless its
    health path goes unanswered."""

    def __init__(
        self, upstream: Upstream, label: str = "", check: HealthCheck | None = None
    ) -> None:
        super().__init__(0, unlaunchable, unlaunchable, RestartPolicy(), label=label)
        self._url = upstream.url
        self.state = ReplicaState.READY
        self._served: str | None = None
        self._unread_until = 0.0  # after a failed ask: not asked again before then
        asked = upstream.health_path is not None and check is not None and check.enabled
        self._check = check if asked else None
        self._health_url = self._url + (upstream.health_path or "")
        self._headers = upstream.auth_headers()
        self._probing: asyncio.Task[None] | None = None
        self._answering = True  # until its health path goes unanswered
        self._next_ask = 0.0

    @property
    def routable(self) -> bool:
        self._probe()
        return self._answering and super().routable

    def open_for(self) -> float:
        """While out of routing for its health: seconds until it is asked again."""
        if self._answering:
            return super().open_for()
        return max(super().open_for(), self._next_ask - time.monotonic(), 0.001)

    def _probe(self) -> None:
        """Ask its health path from now on, if the manifest says so (needs a running loop)."""
        if self._check is None or (self._probing is not None and not self._probing.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: asked once one runs
            self._probing = asyncio.get_running_loop().create_task(self._ask(self._check))

    async def _ask(self, check: HealthCheck) -> None:
        missed = 0
        async with httpx.AsyncClient(timeout=check.timeout_s, headers=self._headers) as client:
            while True:
                status, why = await ask(client, self._health_url)
                missed = 0 if 200 <= status < 300 else missed + 1
                self._next_ask = time.monotonic() + check.interval_s
                self._answered(missed < check.failures, f"{missed} times in a row ({why})")
                await asyncio.sleep(check.interval_s)

    def _answered(self, answering: bool, missed: str) -> None:
        if answering == self._answering:
            return
        self._answering = answering
        if answering:
            self.error = None
            log.info("%s: %s answers again; back in routing", self.label, self._health_url)
        else:
            self.error = f"{self._health_url} went unanswered {missed}"
            log.warning("%s: %s; out of routing until it answers", self.label, self.error)
        self._changed()

    async def served_model(self, headers: dict[str, str]) -> str | None:
        """The one model its ``/v1/models`` lists (asked once, then kept); None while it cannot
        be read (the request goes on as sent; asked again ``MODELS_RETRY_S`` later, not on every
        request). Raises BackendFailed when it lists several or none: the manifest's
        ``upstream.model`` must say which."""
        if self._served is not None or time.monotonic() < self._unread_until:
            return self._served
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.get(self._url + "/v1/models", headers=headers)
            names = [str(card["id"]) for card in answer.raise_for_status().json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: its /v1/models could not be read (%s); asked again in %.0f s",
                        self.label, exc, MODELS_RETRY_S)  # fmt: skip
            self._unread_until = time.monotonic() + MODELS_RETRY_S
            return None
        if len(names) != 1:
            listed = ", ".join(names) or "no model"
            raise BackendFailed(f"the upstream {self._url} serves {listed}: set upstream.model")
        log.info("%s serves %s: requests are renamed to it", self.label, names[0])
        self._served = names[0]
        return self._served

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        self.state = ReplicaState.READY

    async def stop(self, drain_s: float = 30.0) -> None:
        """It keeps running; only asking its health path stops (until it is used again)."""
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        state = self.state.value if self._answering else "unreachable"
        return {**super().describe(), "url": self._url, "state": state, "error": self.error}
