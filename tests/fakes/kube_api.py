"""An in-process fake Kubernetes API server (kmock's emulator) on a real socket, in a thread.

kmock stores what it is sent and serves it back: no validation, no defaulting, no
controllers, label selectors ignored. Tests play the controllers by writing status through
the status endpoints and by creating the pods a controller would.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import kmock


class FakeKubernetes:
    def __init__(self) -> None:
        self.emulator = kmock.KubernetesEmulator()
        # kmock lists only resources it knows of: declare pods before any exists.
        self.emulator.resources["v1/pods"] = kmock.ResourceInfo()
        self.url = ""
        self._logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._clock = datetime(2026, 12, 5, 9, 0, 0)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> FakeKubernetes:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the fake API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def serve_log(self, namespace: str, pod: str, text: str) -> None:
        """Add ``text``'s lines to the pod's log, which its log endpoint answers with (kmock
        has no logs of its own) as the kubelet does: the last ``tailLines`` lines, each after
        the time it was added at with ``timestamps=true``."""
        key = (namespace, pod)
        if key not in self._logs:
            self._logs[key] = []
            path = f"get /api/v1/namespaces/{namespace}/pods/{pod}/log"
            reply = partial(self._log, self._logs[key])
            self.emulator[path] << kmock.headers({"Content-Type": "text/plain"}) << reply
        for line in text.splitlines():
            self._clock += timedelta(microseconds=1500)  # times that share a second too
            self._logs[key].append((self._clock.isoformat(timespec="microseconds"), line))

    @staticmethod
    def _log(lines: list[tuple[str, str]], request: kmock.Request) -> bytes:
        tail = (
            lines[-int(request.params["tailLines"]) :] if "tailLines" in request.params else lines
        )
        stamped = request.params.get("timestamps") == "true"
        text = "".join(f"{when}Z {line}\n" if stamped else f"{line}\n" for when, line in tail)
        return text.encode()

    def requests(self) -> list[kmock.Request]:
        """Every request the fake has answered, in order."""
        return list(self.emulator)

    def stored(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as stored, or None if absent or deleted."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.emulator.objects[key].raw
        return raw
