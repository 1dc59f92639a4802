"""``serve.optimize_for: auto``: each variant's kernel follows the load it sees.

Every second the follower samples, for each variant that follows its load (``auto``, on GPUs
this fleet places, its kernels measured by the tuner, not swap-managed), the requests in flight
per ready replica. Once a window of samples is in and ``hold_s`` has passed since the variant's
start or last switch, ``serving.kernel_load.advise`` says whether another measured kernel is
expected to be at least ``min_gain`` faster at that load.

A switch (``serving.fleet.switch``) starts a replica with the new kernel beside each old one and
then drains the old, or, where there is no room beside, puts the variant's one replica to sleep
and serves from the other kernel's (the standby kept asleep from the last switch, or a new
one). Where neither can be done the variant stays on its kernel and its status says why. No
request fails for a switch. A switch that could not be made leaves the old replica serving with
its kernel, and is not tried again for ``RETRY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from serving import kernels, tuner
from serving.errors import PlacementError, QuantgateError
from serving.fleet.context import FleetContext
from serving.fleet.controller import VariantController
from serving.fleet.switch import KernelSwitcher
from serving.kernel_load import Advice, LoadWindow, advise
from serving.replica import Replica, ReplicaState

log = logging.getLogger("serving.fleet")
SAMPLE_S = 1.0
RETRY_S = 600.0  # a switch that could not be made is not tried again sooner


@dataclass
class Following:
    """What the follower knows of one variant."""

    controller: VariantController
    since: float  # its start, or its last switch (monotonic)
    window: LoadWindow = field(default_factory=LoadWindow)
    streams: float | None = None  # mean requests in flight per replica over the window
    switches: int = 0
    switching: bool = False
    last: str | None = None  # the last decision or refusal, as logged
    standby: Replica | None = None  # the kernel switched from, asleep (switches by sleep)
    standby_kernel: str | None = None
    failed: dict[str, float] = field(default_factory=dict)  # kernel -> when a switch to it failed
    task: asyncio.Task[None] | None = None
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)  # tuning key -> record

    def view(self) -> dict[str, Any]:
        streams = None if self.streams is None else round(self.streams, 2)
        standby = self.standby
        return {"streams_per_replica": streams, "switches": self.switches,
                "switching": self.switching, "last": self.last,
                "standby": {"kernel": self.standby_kernel, "state": standby.state.value}
                if standby is not None else None}  # fmt: skip


class KernelFollower:
    def __init__(
        self,
        ctx: FleetContext,
        controllers: Callable[[], Iterable[VariantController]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._controllers = controllers
        self._clock = clock
        self._following: dict[str, Following] = {}
        self._task: asyncio.Task[None] | None = None
        self._switcher = KernelSwitcher(ctx)
        self._stopping: set[asyncio.Task[None]] = set()  # standbys being stopped

    def start(self) -> None:
        """Start following where a variant may follow its load (on GPUs this fleet places);
        elsewhere say that nothing is followed."""
        ctx = self._ctx
        if self._task is not None or not any(
            m.serve.follows_load for m in ctx.manifest.models.values()
        ):
            return
        if ctx.places_gpus and ctx.hardware.device == "cuda":
            self._task = asyncio.create_task(self._run(), name="kernel-follower")
        else:
            where = "a scheduler runs vLLM" if not ctx.places_gpus else "this is no GPU"
            log.warning(
                "optimize_for auto follows no load here (%s: kernels are not measured); the "
                "kernel is the checkpoint's default or serve.kernel",
                where,
            )

    async def aclose(self) -> None:
        tasks = [f.task for f in self._following.values() if f.task is not None]
        for task in [self._task, *tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for f in self._following.values():
            self._tidy(f)
        await asyncio.gather(*self._stopping, return_exceptions=True)

    def view(self, label: str) -> dict[str, Any] | None:
        following = self._following.get(label)
        return following.view() if following else None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                self.tick()
            except Exception:  # one bad look must not stop the following
                log.exception("optimize_for auto: the kernel follower's look failed")

    def tick(self) -> None:
        """Sample every following variant's load; start the switches it calls for."""
        now = self._clock()
        controllers = list(self._controllers())
        self._forget({c.label for c in controllers})
        for c in controllers:
            if not self._follows(c):
                continue
            ready = c.pool.ready()
            f = self._following.get(c.label)
            if f is None or f.controller is not c:  # new, or replaced by a reload
                if f is not None and f.task is not None:
                    f.task.cancel()  # a switch of the controller the reload retired
                if f is not None:
                    self._tidy(f)
                f = self._following[c.label] = Following(c, since=now)
            if f.switching:
                continue
            if not ready:  # not serving: its load and hold start afresh when it is
                f.since, f.streams = now, None
                f.window.clear()
                if not c.pool.running:
                    self._tidy(f)
                continue
            f.window.add(now, sum(r.in_flight for r in ready) / len(ready))
            opts = c.model.serve.kernel_switch
            f.streams = f.window.mean(now, opts.window_s)
            if f.streams is None or now - f.since < opts.hold_s:
                continue
            self._consider(c, f, f.streams)

    def _forget(self, labels: set[str]) -> None:
        """Drop what is known of variants a reload removed (their switch, their standby)."""
        for label in [k for k in self._following if k not in labels]:
            f = self._following.pop(label)
            if f.task is not None:
                f.task.cancel()
            self._tidy(f)

    def _follows(self, c: VariantController) -> bool:
        return (
            c.model.serve.follows_load
            and c.variant.upstream is None
            and not c.takes_turns()
            and (c.bring_up_task is None or c.bring_up_task.done())
        )

    def _consider(self, c: VariantController, f: Following, streams: float) -> None:
        measured = self._measured(c, f)
        if measured is None:
            return
        untuned, stored, current, key = measured
        advice = advise(current, tuner.stored_rates(untuned, stored), streams,
                        c.model.serve.kernel_switch.min_gain)  # fmt: skip
        if advice is None or self._clock() - f.failed.get(advice.kernel, -RETRY_S) < RETRY_S:
            return
        why = f"optimize_for auto: {advice.describe()}"
        choice = tuner.switched(untuned, stored, advice.kernel, why)
        f.switching = True
        remember = (key, {**stored, "followed": advice.kernel})
        task = self._switch(c, f, choice, advice, remember)
        f.task = asyncio.create_task(task, name=f"switch-{c.label}")

    def _measured(
        self, c: VariantController, f: Following
    ) -> tuple[kernels.KernelChoice, dict[str, Any], str, str] | None:
        """The variant's untuned kernel choice, its stored tuning here, the candidate it serves
        with and the tuning key; None when there is nothing measured to choose from."""
        ready = c.pool.ready()
        version, untuned = self._ctx.tuning.version, c.offered
        if not ready or ready[0].server is None or version is None or untuned is None:
            return None
        key = tuner.tuning_key(self._ctx.hardware, ready[0].server.spec, version)
        stored = f.measured.get(key)
        if stored is None:  # read from disk once per GPU type (and per controller: a reload)
            stored = f.measured[key] = self._ctx.store.tuning(c.model_name, c.variant).get(key, {})
        serving = set(tuner.candidates(untuned)) - set(c.kernel().alternatives)
        if not stored or len(serving) != 1:
            return None
        return untuned, stored, serving.pop(), key

    async def _switch(
        self,
        c: VariantController,
        f: Following,
        choice: kernels.KernelChoice,
        advice: Advice,
        remember: tuple[str, dict[str, Any]],
    ) -> None:
        """Switch to ``choice``; once made, ``remember`` (the tuning record, with the kernel
        followed to) goes into the variant's report: its next start begins there."""
        before, t0 = c.kernel(), self._clock()
        f.last = f"switching to {advice.describe()}"
        log.info("%s: optimize_for auto: %s", c.label, f.last)
        c.kernel_choice = choice
        try:
            how = await self._make(c, f, before)
        except QuantgateError as exc:
            c.kernel_choice = before
            f.failed[advice.kernel] = self._clock()
            f.last = f"stayed on {advice.current} ({advice.describe()}): {exc}"
            log.warning("%s: optimize_for auto: %s", c.label, f.last)
        else:
            f.switches += 1
            self._remember(c, f, remember)
            f.standby_kernel = advice.current if f.standby is not None else None
            took = self._clock() - t0
            f.last = f"switched to {advice.describe()}, {how}, in {took:.1f} s"
            log.info("%s: optimize_for auto: %s", c.label, f.last)
        finally:
            f.switching, f.since = False, self._clock()
            f.window.clear()

    async def _make(self, c: VariantController, f: Following, before: kernels.KernelChoice) -> str:
        """Make the switch (``serving.fleet.switch``): beside where there is room, else by
        sleep where the variant can; how it was made."""
        old = [r for r in c.pool.replicas if r.routable]
        try:
            for replica in old:
                await self._switcher.beside(c, replica)
            self._tidy(f)  # a standby from an earlier switch by sleep is of no more use
            return "a replica started beside the old one"
        except PlacementError:
            if not (len(old) == 1 and self._switcher.can_sleep(c, old[0])):
                raise
        woken = f.standby is not None and f.standby.state is ReplicaState.ASLEEP
        standby, f.standby = f.standby, None

        async def swap() -> None:
            f.standby = await self._switcher.by_sleep(c, old[0], standby, before)

        task = asyncio.create_task(swap(), name=f"switch-by-sleep-{c.label}")
        c.bring_up_task = task  # requests arriving meanwhile wait for it, as for a start
        task.add_done_callback(lambda _: c.pool.changed.notify())
        await task
        return "by sleep (the standby woken)" if woken else "by sleep (a new replica)"

    def _remember(
        self, c: VariantController, f: Following, record: tuple[str, dict[str, Any]]
    ) -> None:
        key, result = record
        try:
            self._ctx.store.save_tuning(c.model_name, c.variant, key, result)
        except (OSError, ValueError) as exc:  # the switch stands; only the next start differs
            log.warning("%s: optimize_for auto: could not record the kernel: %s", c.label, exc)
        f.measured[key] = result

    def _tidy(self, f: Following) -> None:
        """Stop the standby of a variant that stopped (or was replaced by a reload)."""
        standby, f.standby, f.standby_kernel = f.standby, None, None
        if standby is not None:
            log.info("%s: optimize_for auto: stopping the standby", standby.label)
            task = asyncio.create_task(standby.stop(0))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
