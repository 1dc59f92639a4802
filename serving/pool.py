"""The replicas of one variant: scaling, choosing one for a request, draining, idleness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from serving.errors import BackendFailed, QuantgateError, still_holds
from serving.launcher import LaunchSpec, Server
from serving.manifest import HealthCheck, Upstream
from serving.replica import (
    ASLEEP_STATES,
    Replica,
    ReplicaState,
    RestartPolicy,
    unlaunchable,
)
from serving.static_replica import StaticReplica

SpecFactory = Callable[[int], LaunchSpec]
log = logging.getLogger("serving.fleet")


class Changed:
    """Wakes whoever waits for the replicas of a variant to change (state, circuit)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, at_most_s: float) -> None:
        """Until the next change, or ``at_most_s`` seconds (time alone reopens a circuit)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), at_most_s)


class VariantPool:
    def __init__(
        self,
        name: str,
        spec: SpecFactory,
        launch: Callable[[LaunchSpec], Server],
        policy: RestartPolicy,
        prepare: Callable[[Server], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._prepare = prepare
        self._spec = spec
        self._launch = launch
        self._policy = policy
        self.replicas: list[Replica] = []
        self._turn = 0
        self._scaling = asyncio.Lock()
        self.changed = Changed()

    @classmethod
    def static(cls, name: str, upstream: Upstream, check: HealthCheck) -> VariantPool:
        """A pool of one already-running upstream (asked its health path, if it has one)."""
        pool = cls(name, unlaunchable, unlaunchable, RestartPolicy())
        pool.replicas = [StaticReplica(upstream, f"{name} upstream", check)]
        return pool

    @property
    def static_upstream(self) -> bool:
        return any(isinstance(r, StaticReplica) for r in self.replicas)

    @property
    def running(self) -> bool:
        return any(
            r.state not in (ReplicaState.STOPPED, ReplicaState.FAILED) for r in self.replicas
        )

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.routable]

    def asleep(self) -> bool:
        """Nothing awake and a replica asleep (or going to sleep): waking it serves."""
        return not self.ready() and any(r.state in ASLEEP_STATES for r in self.replicas)

    def dormant(self) -> bool:
        """Nothing running, or only asleep: a bring-up (start or wake) is what serves it."""
        return not self.running or self.asleep()

    def open_for(self) -> float | None:
        """When every replica is up but kept out by its circuit: seconds until the first lets
        a request try again (0: a trial request is running). None when one is routable, or may
        become so otherwise."""
        up = [r for r in self.replicas if r.state is ReplicaState.READY]
        if not up or len(up) < len(self.replicas) or any(r.routable for r in up):
            return None
        return min(r.open_for() for r in up)

    def failed(self) -> bool:
        return bool(self.replicas) and all(r.state is ReplicaState.FAILED for r in self.replicas)

    def failure(self) -> BackendFailed | None:
        """When every replica has failed: why the last one did, with vLLM's log tail where
        there is one."""
        if not self.failed():
            return None
        last = self.replicas[-1]
        if last.failure is not None:  # a backend not ready holds until it is asked again
            return still_holds(last.failure)
        return BackendFailed(last.error or "the replica failed")

    def any_failed(self) -> bool:
        return any(r.state is ReplicaState.FAILED for r in self.replicas)

    async def scale(self, count: int) -> None:
        """Start replicas up to ``count`` (all at once) or drain and stop those above it;
        failed replicas are replaced. One scaling at a time.

        Returns when every new replica is ready; raises BackendFailed if none of them is.
        """
        if self.static_upstream:
            return
        async with self._scaling:
            await self._scale(count)

    async def _scale(self, count: int) -> None:
        failed = [r for r in self.replicas if r.state is ReplicaState.FAILED]
        for replica in failed:
            log.info("%s: replacing the failed replica #%d", self.name, replica.index)
        await asyncio.gather(*(r.stop(0) for r in failed))  # what is left of its process
        self.replicas = [r for r in self.replicas if r not in failed]  # its index is free again
        live = [r for r in self.replicas if r.state is not ReplicaState.STOPPED]
        if count < len(live):
            await asyncio.gather(*(r.stop() for r in live[count:]))
            self.replicas = [r for r in self.replicas if r.state is not ReplicaState.STOPPED]
            return
        new = [self._replica(i) for i in self.free_indices(count - len(live))]
        self.replicas = sorted(
            [r for r in self.replicas if r.state is not ReplicaState.STOPPED] + new,
            key=lambda r: r.index,
        )
        results = await asyncio.gather(*(r.start() for r in new), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if new and len(errors) == len(new):
            first = errors[0]
            raise first if isinstance(first, QuantgateError) else BackendFailed(str(first))

    def free_indices(self, count: int) -> list[int]:
        """The ``count`` lowest replica indices not in use: those the next replicas get."""
        used = {r.index for r in self.replicas}
        return [i for i in range(count + len(used)) if i not in used][:count]

    async def add(self) -> Replica:
        """Start one more replica (``free_indices(1)``) and return it once ready; if it does
        not start, it is dropped again and the start's error raised."""
        replica = self._replica(self.free_indices(1)[0])
        self.attach(replica)
        try:
            await replica.start()
        except BaseException:  # a failed start, or cancelled: leave no process behind
            self.detach(replica)
            if replica.server is not None:
                await replica.server.stop(grace_s=5)
            raise
        return replica

    def attach(self, replica: Replica) -> None:
        """Take in a replica started (or kept asleep) outside it."""
        self.replicas = sorted([*self.replicas, replica], key=lambda r: r.index)
        self.changed.notify()

    def detach(self, replica: Replica) -> None:
        """Let go of ``replica`` without stopping it (kept asleep elsewhere)."""
        if replica in self.replicas:
            self.replicas.remove(replica)
        self.changed.notify()

    async def remove(self, replica: Replica, drain_s: float) -> None:
        """Stop routing to ``replica``, let its requests finish (up to ``drain_s``), stop it."""
        await replica.stop(drain_s)
        self.detach(replica)

    def _replica(self, index: int) -> Replica:
        return Replica(index, lambda: self._spec(index), self._launch, self._policy, self._prepare,
                       self.name, self.changed.notify)  # fmt: skip

    def pick(
        self, exclude: frozenset[int] = frozenset(), key: str | None = None, load_cap: int = 4
    ) -> Replica | None:
        """Least outstanding requests among ready replicas (ties round-robin). With a ``key``
        (session, user or prompt prefix) the same replica while it stays within ``load_cap``
        requests of the least loaded one, so affinity cannot build a hot spot."""
        ready = [r for r in self.ready() if r.index not in exclude]
        if not ready:
            return None
        self._turn += 1
        least = min(ready, key=lambda r: (r.in_flight, (r.index - self._turn) % len(ready)))
        if key is None or len(ready) == 1:
            return least
        sticky = max(ready, key=lambda r: zlib.crc32(f"{r.index}:{key}".encode()))
        return sticky if sticky.in_flight <= least.in_flight + load_cap else least

    def idle_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight or a replica starts."""
        busy = (ReplicaState.STARTING, ReplicaState.RESTARTING)
        if not self.replicas or any(r.in_flight or r.state in busy for r in self.replicas):
            return 0.0
        return time.monotonic() - max(r.last_used for r in self.replicas)

    async def stop(self, drain_s: float = 30.0) -> None:
        await asyncio.gather(*(r.stop(drain_s) for r in self.replicas))
        if not self.static_upstream:  # an upstream keeps running, and stays its replica
            self.replicas = []

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.replicas]
