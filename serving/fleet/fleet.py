"""The fleet: from a model name to a lease on a ready replica, one controller per variant.

Names resolve here (model, ``model:variant``, aliases, ``model:auto``); each (model, variant)
has a ``VariantController`` that builds and starts it on demand (``serving.fleet.controller``).
A request for a variant that is not ready waits within the manifest's bound (``on_missing``) or
is told to come back (``VariantUnavailable`` with Retry-After); with ``on_missing.fallback`` the
first ready variant in manifest order answers meanwhile. Variants idle longer than
``idle_stop_s`` are stopped and start again on the next request. A reload swaps in a new
manifest: kept variants keep their processes, removed and changed ones drain in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from serving import kernels
from serving.errors import BackendFailed, ReloadRefused, UnknownModel
from serving.fleet.context import FleetContext
from serving.fleet.controller import VariantController
from serving.fleet.follow import KernelFollower
from serving.fleet.routing import RequestHints, affinity_key
from serving.fleet.status import Lease, VariantState, VariantStatus, variant_status
from serving.fleet.swaps import resident_of
from serving.hardware import Hardware
from serving.job import Job
from serving.jobs import JobRunner
from serving.manifest import Manifest, split_model_name
from serving.placement import Placement
from serving.reload import ManifestChange, compare, restart_needed
from serving.replica import Replica
from serving.static_replica import StaticReplica
from serving.swapping import Resident, SwapEvent, residency

JSON_HEADERS = {"content-type": "application/json"}
log = logging.getLogger("serving.fleet")


class Fleet:
    def __init__(self, ctx: FleetContext) -> None:
        self._ctx = ctx
        self._variants = {
            (m, v): VariantController(ctx, m, v)
            for m, model in ctx.manifest.models.items()
            for v in model.variants
        }
        self._reaper: asyncio.Task[None] | None = None
        self._follower = KernelFollower(ctx, lambda: self._variants.values())
        self._retiring: set[asyncio.Task[None]] = set()  # variants a reload removed, draining

    @property
    def manifest(self) -> Manifest:
        return self._ctx.manifest

    @property
    def jobs(self) -> JobRunner:
        return self._ctx.jobs

    @property
    def hardware(self) -> Hardware:
        return self._ctx.hardware

    @property
    def placement(self) -> Placement:
        return self._ctx.placement

    def residents(self) -> list[Resident]:
        """Every swap-managed variant that is launched (the swapper's view)."""
        found = (resident_of(c) for c in self._variants.values())
        return [r for r in found if r is not None]

    # -- names -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        out: list[str] = []
        for m, model in self.manifest.models.items():
            out += [m, *(f"{m}:{v}" for v in model.variants)]
        return out + list(self.manifest.aliases)

    def resolve(self, name: str) -> tuple[str, str]:
        """``tiny`` -> (tiny, its default variant); ``tiny:v`` -> (tiny, v); an alias -> its
        target; ``tiny:auto`` -> the first ready variant in manifest order, else the default."""
        model_name, variant = split_model_name(self.manifest.aliases.get(name, name))
        model = self.manifest.models.get(model_name)
        if model is None:
            raise UnknownModel(name, self.names())
        if variant == "auto" and "auto" not in model.variants:
            ready = [v for v in model.variants if self._variants[(model_name, v)].pool.ready()]
            return model_name, ready[0] if ready else model.default_variant
        if variant is not None and variant not in model.variants:
            raise UnknownModel(name, self.names())
        return model_name, variant or model.default_variant

    # -- state -----------------------------------------------------------------------------
    def kernel(self, model_name: str, name: str) -> kernels.KernelChoice:
        return self._variants[(model_name, name)].kernel()

    def state(self, model_name: str, name: str) -> VariantState:
        return self._variants[(model_name, name)].state()

    def status(self, model_name: str, name: str) -> VariantStatus:
        controller = self._variants[(model_name, name)]
        return variant_status(controller, self._follower.view(controller.label))

    def statuses(self) -> list[VariantStatus]:
        return [variant_status(c, self._follower.view(c.label)) for c in self._variants.values()]

    def ready_now(self, model_name: str, name: str) -> bool:
        """Whether ``acquire`` would return at once (a routable replica is there)."""
        return bool(self._variants[(model_name, name)].pool.ready())

    # -- acquiring a replica ---------------------------------------------------------------
    async def acquire(
        self,
        model_name: str,
        name: str,
        exclude: frozenset[int] = frozenset(),
        hints: RequestHints | None = None,
    ) -> Lease:
        """A lease on a ready replica, bringing the variant up if needed; ``exclude``: replicas
        already tried; ``hints``: what the model's affinity policy keys on.

        With ``on_missing.fallback``, a variant that is not ready yet is built (or started)
        in the background while the first ready variant in manifest order answers.
        """
        model = self.manifest.models[model_name]
        affinity = affinity_key(model.routing.affinity, hints)
        controller = self._variants[(model_name, name)]
        replica = controller.pool.pick(exclude, affinity, model.routing.load_cap)
        served = name
        if replica is None and model.on_missing.fallback and not exclude:
            served, replica = self._fallback(controller, affinity)
        if replica is None:
            replica = await controller.wait_for_replica(exclude, affinity)
        trial = replica.acquire()
        upstream = model.variants[served].upstream
        policy = (model.routing.failure_threshold, model.routing.open_s)
        if upstream is None:
            names = replica.served_names  # as launched: a reload may have moved the default
            return Lease(model_name, served, replica.url, replica, JSON_HEADERS, names, *policy,
                         trial=trial)  # fmt: skip
        headers = {**JSON_HEADERS, **upstream.auth_headers()}
        forward = upstream.model
        if forward is None and isinstance(replica, StaticReplica):
            try:
                forward = await replica.served_model(headers)
            except BackendFailed:
                replica.release(trial)
                raise
        names = (forward,) if forward else ()  # unknown: the body goes on as sent
        return Lease(model_name, served, replica.url, replica, headers, names, *policy,
                     trial=trial)  # fmt: skip

    def _fallback(
        self, controller: VariantController, affinity: str | None
    ) -> tuple[str, Replica | None]:
        model_name, name = controller.model_name, controller.name
        if controller.usable() and controller.pool.dormant():
            controller.ensure_bring_up()
        load_cap = controller.model.routing.load_cap
        for other in controller.model.variants:
            if other != name:
                pool = self._variants[(model_name, other)].pool
                replica = pool.pick(frozenset(), affinity, load_cap)
                if replica is not None:
                    return other, replica
        return name, None

    # -- swapping --------------------------------------------------------------------------
    def observe_swaps(self, listener: Callable[[SwapEvent], None]) -> None:
        """Call ``listener`` with every swap step (sleep, wake, start, stop, queue wait)."""
        self._ctx.swaps.observe(listener)

    # -- admin operations ------------------------------------------------------------------
    def build(self, model_name: str, name: str, start: bool = True) -> Job | None:
        """(Re)build a variant and (``start``) start it; clears an earlier failure, and
        (``start``) replaces failed replicas. None: nothing to build."""
        controller = self._variants[(model_name, name)]
        controller.failure = None
        if controller.built():
            if start and controller.pool.any_failed():
                controller.ensure_bring_up()
            return None
        job = controller.submit()  # the bring-up finds this same job
        if start:
            controller.ensure_bring_up()
        return job

    async def scale(self, model_name: str, name: str, replicas: int) -> None:
        """Start (build first if needed), scale, or (``replicas=0``) drain and stop a variant."""
        await self._variants[(model_name, name)].scale(replicas)
        self._release_claims(model_name, name)

    async def stop(self, model_name: str, name: str) -> None:
        await self._variants[(model_name, name)].stop()

    def _release_claims(self, model_name: str, name: str) -> None:
        """Give back the GPUs claimed for the variant's replicas that no longer run."""
        controller = self._variants.get((model_name, name))
        pool = controller.pool if controller else None
        live = {f"{model_name}:{name}#{r.index}" for r in pool.replicas} if pool else set()
        for owner in self.placement.claims():
            if owner.startswith(f"{model_name}:{name}#") and owner not in live:
                self.placement.release(owner)

    # -- reloading -------------------------------------------------------------------------
    def reload(self, manifest: Manifest) -> ManifestChange:
        """Serve ``manifest`` from now on (``serving.reload``): new variants appear, removed and
        changed ones drain and stop in the background, kept ones keep their processes. Raises
        ReloadRefused when it needs a restart; nothing changes then."""
        why = restart_needed(self.manifest, manifest)
        if why:
            raise ReloadRefused(why)
        old, change = self.manifest, compare(self.manifest, manifest)
        retired = {key: self._variants.pop(key) for key in change.removed + change.changed}
        self._ctx.manifest = manifest
        self._ctx.specs.use(manifest)
        for m, v in change.added + change.changed:
            self._variants[(m, v)] = VariantController(self._ctx, m, v)
        for (m, v), controller in retired.items():
            drain = old.models[m].serve.drain_s
            task = asyncio.create_task(self._retire(controller, drain), name=f"retire-{m}:{v}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.start()  # the idle reaper, if the new manifest stops idle variants
        return change

    async def _retire(self, controller: VariantController, drain_s: float) -> None:
        await controller.retire(drain_s)
        self._release_claims(controller.model_name, controller.name)

    # -- for metrics -----------------------------------------------------------------------
    def replica_rows(self) -> list[dict[str, Any]]:
        """Every replica's model, variant, state and circuit (cheap: for metrics)."""
        return [
            {"model": m, "variant": v, "state": r.state.value, "circuit": r.circuit}
            for (m, v), controller in self._variants.items()
            for r in controller.pool.replicas
        ]

    def residency_rows(self) -> list[tuple[str, str, str]]:
        """Every launched variant's (model, variant, residency), for metrics."""
        return [
            (m, v, residency(controller.pool.replicas).value)
            for (m, v), controller in self._variants.items()
            if controller.variant.upstream is None
        ]

    def kernel_rows(self) -> list[dict[str, Any]]:
        """Each launched variant's kernel, and what the kernel follower saw of it (metrics)."""
        rows = []
        for (m, v), controller in self._variants.items():
            if controller.variant.upstream is not None or not controller.pool.running:
                continue
            seen = self._follower.view(controller.label) or {}
            rows.append({"model": m, "variant": v, "kernel": controller.kernel().kernel or "",
                         "switches": seen.get("switches"),
                         "streams": seen.get("streams_per_replica")})  # fmt: skip
        return rows

    # -- background work -------------------------------------------------------------------
    def start(self) -> None:
        """Start the idle reaper and the kernel follower (``optimize_for: auto``) where the
        manifest asks for them (call from inside the running event loop); name the built
        variants' folders (``VariantStore.link_name``)."""
        for m, model in self.manifest.models.items():
            for v, variant in model.variants.items():
                if variant.needs_build and variant.upstream is None:
                    self._ctx.store.link_name(m, v, variant)
        idle_stops = any(m.serve.idle_stop_s for m in self.manifest.models.values())
        if idle_stops and self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="idle-reaper")
        self._follower.start()

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for key, controller in list(self._variants.items()):  # a reload may change them
                if self._variants.get(key) is not controller:
                    continue
                idle_stop = controller.model.serve.idle_stop_s
                pool = controller.pool
                if idle_stop and pool.running and pool.idle_for() >= idle_stop:
                    await controller.stop()

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self._follower.aclose()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        controllers = list(self._variants.values())
        bring_ups = [c.bring_up_task for c in controllers if c.bring_up_task is not None]
        for task in bring_ups:
            task.cancel()
        await self.jobs.aclose()
        await asyncio.gather(*bring_ups, return_exceptions=True)  # stops tuning candidates
        await asyncio.gather(*(c.pool.stop(drain_s=5.0) for c in controllers))
