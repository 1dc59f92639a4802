"""An upstream that is already running (``upstream.url`` in the manifest), as a replica."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from serving.errors import BackendFailed
from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable

log = logging.getLogger("serving.replica")
MODELS_RETRY_S = 10.0  # an upstream whose /v1/models could not be read is asked again after


class StaticReplica(Replica):
    """An upstream that is already running: always routable, never started or stopped."""

    def __init__(self, url: str, label: str = "") -> None:
        super().__init__(0, unlaunchable, unlaunchable, RestartPolicy(), label=label)
        self._url = url.rstrip("/")
        self.state = ReplicaState.READY
        self._served: str | None = None
        self._unread_until = 0.0  # after a failed ask: not asked again before then

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
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self._url, "state": self.state.value}
