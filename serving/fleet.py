"""The fleet: from a model name to a ready vLLM replica, building and starting on demand.

For each (model, variant) one bring-up at a time: build the variant if it is missing (one job,
however many requests wait), then start its replicas. A request waits for that within the
manifest's bound (``on_missing``) or is told to come back (``VariantUnavailable`` with
Retry-After). A failed build or first start stays failed, with its cause, until an admin
retries; a replica that crashes later is restarted by its supervisor (``serving.replica``).
Variants idle longer than ``idle_stop_s`` are stopped and start again on the next request.
A variant this machine cannot serve (``Hardware.unsupported``, or no kernel for its scheme), or
whose measured perplexity increase is over its ``max_ppl_increase``, is refused with the reason
and never started (it may still be built, for quality studies).
On GPUs, a variant that more than one kernel can serve is launched with the kernel pinned by
``serve.kernel``, else with the winner measured by ``serving.tuner`` (once per GPU type and
vLLM version; the first launch measures, later ones read the variant's report).
With the manifest's ``swapping``, variants take turns on GPUs that cannot hold them all awake
(``serving.swapping``): a request for one that is asleep, or cold with no room, waits in a
bounded queue while the least recently used awake one is put to sleep and it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving import kernels, tuner
from serving.errors import (
    BackendFailed,
    QuantgateError,
    ReloadRefused,
    UnknownModel,
    VariantOverBudget,
    VariantUnavailable,
    VariantUnsupported,
)
from serving.hardware import Hardware
from serving.jobs import Job, JobRunner
from serving.launcher import LaunchSpec, Server, VllmServer, importable
from serving.manifest import Manifest, Method, Model, split_model_name
from serving.placement import Placement
from serving.pool import VariantPool
from serving.quality import over_budget
from serving.reload import ManifestChange, compare, restart_needed
from serving.replica import Replica, RestartPolicy, StaticReplica
from serving.specs import LaunchPlanner
from serving.store import VariantStore, weights_size
from serving.swapping import Resident, SwapEvent, Swapper, residency, takes_turns
from serving.worker.hf_quantizers import PACKAGES as QUANTIZER_PACKAGES

JSON_HEADERS = {"content-type": "application/json"}
# Libraries vLLM imports at load for a method: module, and what to install (bitsandbytes and
# torchao: the same pins as the quantizer's, which builds or measures them).
VLLM_PACKAGES = {
    Method.BITSANDBYTES: QUANTIZER_PACKAGES["bitsandbytes"],
    Method.GGUF: ("vllm_gguf_plugin", "vllm-gguf-plugin==0.0.5"),
    Method.TORCHAO: QUANTIZER_PACKAGES["torchao"],
}


log = logging.getLogger(__name__)


class VariantState(StrEnum):
    MISSING = "missing"  # quantized variant not built yet
    BUILDING = "building"
    BUILT = "built"  # on disk, no replica running
    STARTING = "starting"
    READY = "ready"
    UNREACHABLE = "unreachable"  # up, but every replica's circuit is open after failed requests
    FAILED = "failed"
    ASLEEP = "asleep"  # swapped out (vLLM sleep mode, or stopped where there is none)
    UNSUPPORTED = "unsupported"  # this machine has no kernel for it
    OVER_BUDGET = "over_budget"  # built, but its perplexity increase is over max_ppl_increase


@dataclass(frozen=True)
class Lease:
    """One request's hold on a replica: release it when the response is done."""

    model: str
    variant: str
    url: str
    replica: Replica
    headers: dict[str, str]
    upstream_model: str | None = None  # rename the body's model to this, for static upstreams

    def release(self) -> None:
        self.replica.release()


class _Slot:
    """Runtime state of one variant."""

    def __init__(self, pool: VariantPool) -> None:
        self.pool = pool
        self.bring_up: asyncio.Task[None] | None = None
        self.failure: QuantgateError | None = None
        self.kernel: kernels.KernelChoice | None = None
        self.waiting = 0  # requests waiting for it to wake or start (swapping's queue)
        self.weights_bytes: int | None = None


class Fleet:
    def __init__(
        self,
        manifest: Manifest,
        store: VariantStore,
        jobs: JobRunner,
        vllm_python: Path,
        hardware: Hardware,
        host: str = "127.0.0.1",
        launch: Callable[[LaunchSpec], Server] | None = None,
        places_gpus: bool = True,
    ) -> None:
        self.manifest = manifest
        self.hardware = hardware
        self.jobs = jobs
        self._store = store
        self._host = host
        self._launch = launch or (lambda spec: VllmServer(spec, vllm_python))
        self._vllm_python = vllm_python
        self._packages: dict[str, bool] = {}  # module -> importable in vLLM's environment
        self.placement = Placement(hardware)
        self.places_gpus = places_gpus  # False where a scheduler (Kubernetes) places pods
        self._specs = LaunchPlanner(manifest, store, hardware, self.placement, host, places_gpus)
        # kernels are measured only where this fleet runs vLLM itself (logs, GPUs)
        self._tuning = tuner.KernelTuning(hardware, store, self._launch, vllm_python, places_gpus)
        self._parked: dict[tuple[str, str], Server] = {}  # tuned winners kept running
        self._slots = {
            (m, v): _Slot(self._pool(m, model, v))
            for m, model in manifest.models.items()
            for v in model.variants
        }
        self._reaper: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # variants a reload removed, draining
        self._swap_listeners: list[Callable[[SwapEvent], None]] = []
        self.swapper: Swapper | None = None
        if manifest.swapping is not None and manifest.swapping.enabled:
            self.swapper = Swapper(
                manifest.swapping,
                self.placement,
                self._residents,
                sleep_mode=places_gpus and hardware.device == "cuda",
                on_event=self._swap_event,
            )

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
            ready = [v for v in model.variants if self._slots[(model_name, v)].pool.ready()]
            return model_name, ready[0] if ready else model.default_variant
        if variant is not None and variant not in model.variants:
            raise UnknownModel(name, self.names())
        return model_name, variant or model.default_variant

    # -- state -----------------------------------------------------------------------------
    def kernel(self, model_name: str, name: str) -> kernels.KernelChoice:
        """The kernel the variant gets here: from its checkpoint once built, else its recipe."""
        slot = self._slots[(model_name, name)]
        variant = self.manifest.models[model_name].variants[name]
        if variant.upstream is not None:
            return kernels.KernelChoice(None, "external", reason="an already-running upstream")
        unsupported = self.hardware.unsupported(variant)
        if unsupported:
            return kernels.KernelChoice(None, None, reason=unsupported)
        if slot.kernel is None:
            return kernels.choose(kernels.planned_scheme(variant), self.hardware)
        return slot.kernel

    def state(self, model_name: str, name: str) -> VariantState:
        slot = self._slots[(model_name, name)]
        model = self.manifest.models[model_name]
        if not self.kernel(model_name, name).supported:
            return VariantState.UNSUPPORTED
        if self._over_budget(model_name, name):
            return VariantState.OVER_BUDGET
        if slot.failure is not None or slot.pool.failed():
            return VariantState.FAILED
        if slot.pool.ready():
            return VariantState.READY
        if slot.pool.open_for() is not None:
            return VariantState.UNREACHABLE
        if slot.pool.asleep():
            return VariantState.ASLEEP
        if slot.pool.running or (model_name, name) in self._tuning.active:
            return VariantState.STARTING
        if self.jobs.active(model_name, model.variants[name]) or self._preparing(model_name):
            return VariantState.BUILDING
        return VariantState.BUILT if self._built(model_name, model, name) else VariantState.MISSING

    def describe(self, model_name: str, name: str) -> dict[str, Any]:
        model = self.manifest.models[model_name]
        variant = model.variants[name]
        slot = self._slots[(model_name, name)]
        last = self.jobs.last(model_name, variant)
        if last is None and variant.upstream is None:  # the base: the source's import or download
            last = self.jobs.source_job(model)
        kernel = self.kernel(model_name, name)
        error = (None if kernel.supported else kernel.reason) or self._over_budget(model_name, name)
        return {
            "model": model_name,
            "variant": name,
            "default": name == model.default_variant,
            "state": self.state(model_name, name).value,
            "residency": residency(slot.pool.replicas).value,
            "method": variant.method.value,
            "scheme": variant.scheme,
            "recipe_hash": variant.recipe_hash() if variant.quantized else None,
            "max_ppl_increase": variant.max_ppl_increase,
            "kernel": {"quantization": kernel.quantization, "kernel": kernel.kernel,
                       "alternatives": list(kernel.alternatives), "reason": kernel.reason,
                       "env": kernel.env, "pinned": model.serve.kernel,
                       "tuning": (model_name, name) in self._tuning.active,
                       "measured": self._measured(model_name, name)},
            "error": error or (str(slot.failure) if slot.failure else None),
            "job": last.summary() if last else None,
            "replicas": slot.pool.describe(),
            "report": self._store.report(model_name, variant) if variant.needs_job else None,
        }  # fmt: skip

    def _measured(self, model_name: str, name: str) -> dict[str, Any]:
        variant = self.manifest.models[model_name].variants[name]
        return {} if variant.upstream else self._store.tuning(model_name, variant)

    def _built(self, model_name: str, model: Model, name: str) -> bool:
        variant = model.variants[name]
        if variant.upstream is not None:
            return True
        if not variant.needs_job:  # served from the source: imported or downloaded yet?
            return self.jobs.source_ready(model)
        return self._store.is_built(model_name, variant)

    def _preparing(self, model_name: str) -> bool:
        """Whether the model's source is being imported or downloaded now."""
        model = self.manifest.models[model_name]
        job = None if self.jobs.source_ready(model) else self.jobs.source_job(model)
        return job is not None and not job.done.is_set()

    def _over_budget(self, model_name: str, name: str) -> str | None:
        """Why the quality gate refuses the built variant, or None (also: not built yet)."""
        variant = self.manifest.models[model_name].variants[name]
        if variant.max_ppl_increase is None:
            return None
        reason = over_budget(variant, self._store.report(model_name, variant))
        return f"{model_name}:{name} is not served: {reason}" if reason else None

    # -- acquiring a replica ---------------------------------------------------------------
    def ready_now(self, model_name: str, name: str) -> bool:
        """Whether ``acquire`` would return at once (a routable replica is there)."""
        return bool(self._slots[(model_name, name)].pool.ready())

    async def acquire(
        self,
        model_name: str,
        name: str,
        exclude: frozenset[int] = frozenset(),
        affinity: str | None = None,
    ) -> Lease:
        """A lease on a ready replica, bringing the variant up if needed (module docstring).

        With ``on_missing.fallback``, a variant that is not ready yet is built (or started)
        in the background while the first ready variant in manifest order answers.
        """
        model = self.manifest.models[model_name]
        cap = model.routing.load_cap
        replica = self._slots[(model_name, name)].pool.pick(exclude, affinity, cap)
        served = name
        if replica is None and model.on_missing.fallback and not exclude:
            served, replica = self._fallback(model_name, name, affinity)
        if replica is None:
            replica = await self._wait_for_replica(model_name, name, exclude, affinity)
        replica.acquire()
        rename = f"{model_name}:{served}" if served != name else None
        upstream = model.variants[served].upstream
        if upstream is None:
            return Lease(model_name, served, replica.url, replica, JSON_HEADERS, rename)
        headers = {**JSON_HEADERS, **upstream.auth_headers()}
        forward = upstream.model
        if forward is None and isinstance(replica, StaticReplica):
            try:
                forward = await replica.served_model(headers)
            except BackendFailed:
                replica.release()
                raise
        return Lease(model_name, served, replica.url, replica, headers, forward or rename)

    def _fallback(
        self, model_name: str, name: str, affinity: str | None
    ) -> tuple[str, Replica | None]:
        model = self.manifest.models[model_name]
        slot = self._slots[(model_name, name)]
        usable = (
            self.kernel(model_name, name).supported
            and not self._over_budget(model_name, name)
            and slot.failure is None
        )
        if usable and slot.pool.dormant():
            self._ensure_bring_up(model_name, name)
        for other in model.variants:
            if other != name:
                replica = self._slots[(model_name, other)].pool.pick(
                    frozenset(), affinity, model.routing.load_cap
                )
                if replica is not None:
                    return other, replica
        return name, None

    async def _wait_for_replica(
        self, model_name: str, name: str, exclude: frozenset[int], affinity: str | None
    ) -> Replica:
        slot = self._slots[(model_name, name)]
        kernel = self.kernel(model_name, name)
        if not kernel.supported:
            raise VariantUnsupported(f"{model_name}:{name} cannot be served here: {kernel.reason}")
        refusal = self._over_budget(model_name, name)
        if refusal:
            raise VariantOverBudget(refusal)
        if slot.failure is not None:
            raise slot.failure
        closed_in = slot.pool.open_for()
        if closed_in is not None:  # known to fail: no client is held for a timeout
            raise VariantUnavailable(
                f"{model_name}:{name} is unreachable: its requests failed and its circuit is "
                f"open; the next try in {closed_in:.1f} s",
                max(1, math.ceil(closed_in)),
            )
        policy = self.manifest.models[model_name].on_missing
        if slot.pool.dormant():
            self._ensure_bring_up(model_name, name)
        if policy.action == "reject":
            raise self._unavailable(model_name, name, "try again later")
        turns = self.swapper is not None and takes_turns(self.manifest, model_name, name)
        if turns:
            assert self.swapper is not None
            if slot.waiting >= self.swapper.policy.queue_size:
                raise self._unavailable(
                    model_name, name, f"{slot.waiting} requests already wait for it (queue full)"
                )
            slot.waiting += 1
        try:
            return await self._wait_in_line(model_name, name, exclude, affinity, turns)
        finally:
            if turns:
                slot.waiting -= 1

    async def _wait_in_line(
        self,
        model_name: str,
        name: str,
        exclude: frozenset[int],
        affinity: str | None,
        turns: bool,
    ) -> Replica:
        slot = self._slots[(model_name, name)]
        policy = self.manifest.models[model_name].on_missing
        start = time.monotonic()
        deadline = start + policy.max_wait_s
        while time.monotonic() < deadline:
            replica = slot.pool.pick(exclude, affinity) or slot.pool.pick()
            if replica is not None:
                if turns:
                    waited = time.monotonic() - start
                    self._swap_event(SwapEvent(model_name, name, "queue_wait", waited))
                return replica
            if slot.failure is not None:
                raise slot.failure
            failure = slot.pool.failure()  # before the bring-up task has recorded slot.failure
            if failure is not None:
                raise BackendFailed(
                    f"every replica of {model_name}:{name} has failed: {failure}",
                    log_tail=failure.log_tail,
                )
            idle = slot.bring_up is None or slot.bring_up.done()
            if idle and slot.pool.dormant():
                self._ensure_bring_up(model_name, name)
            await asyncio.sleep(0.02 if turns else 0.1)
        raise self._unavailable(model_name, name, f"waited {policy.max_wait_s:.0f} s")

    def _unavailable(self, model_name: str, name: str, detail: str) -> VariantUnavailable:
        retry = self.manifest.models[model_name].on_missing.retry_after_s
        state = self.state(model_name, name).value
        return VariantUnavailable(f"{model_name}:{name} is {state}; {detail}", retry)

    def _ensure_bring_up(self, model_name: str, name: str) -> asyncio.Task[None]:
        slot = self._slots[(model_name, name)]
        if slot.bring_up is None or slot.bring_up.done():
            slot.bring_up = asyncio.create_task(self._bring_up(model_name, name))
            slot.bring_up.add_done_callback(_consume_exception)
        return slot.bring_up

    async def _bring_up(self, model_name: str, name: str, replicas: int | None = None) -> None:
        slot = self._slots[(model_name, name)]
        model = self.manifest.models[model_name]
        try:
            if slot.pool.asleep():
                await self._wake(model_name, name)
                return
            await self._check_packages(model_name, name)
            if not self._built(model_name, model, name):
                variant = model.variants[name]
                job = (
                    self.jobs.submit(model_name, model, name)
                    if variant.needs_job
                    else self.jobs.prepare_source(model_name, model)
                )
                if job is not None:
                    await job.wait()
            self._check_servable(model_name, name)
            at_load = model.variants[name].serve_quantization  # fp8, bnb: quantized at load
            slot.kernel = kernels.choose(
                kernels.checkpoint_scheme(self._specs.model_dir(model_name, name), at_load),
                self.hardware,
            )
            if not slot.kernel.supported:
                raise VariantUnsupported(f"{model_name}:{name}: {slot.kernel.reason}")
            async with self._room(model_name, name):
                try:
                    slot.kernel, parked = await self._tuning.resolve(
                        model_name, name, model, slot.kernel,
                        lambda: self._launch_spec(model_name, name, 0), self._specs.side,
                    )  # fmt: skip
                finally:
                    self._specs.release(f"{model_name}:{name}#tune")
                if parked is not None:
                    self._parked[(model_name, name)] = parked
                t0 = time.monotonic()
                await slot.pool.scale(replicas or model.serve.replicas)
                log.info("%s:%s ready: %d replica(s), kernel %s (%s), up in %.1f s", model_name,
                         name, len(slot.pool.ready()), slot.kernel.kernel, slot.kernel.reason,
                         time.monotonic() - t0)  # fmt: skip
                if self._resident(model_name, name) is not None:  # swap-managed
                    self._swap_event(SwapEvent(model_name, name, "start", time.monotonic() - t0))
        except VariantUnavailable:
            # swapping's "try again" (a variant on the GPU still streams): no failure to
            # remember; pause before waiting requests start the next attempt
            assert self.swapper is not None
            await asyncio.sleep(min(1.0, self.swapper.policy.drain_timeout_s))
            raise
        except QuantgateError as exc:
            slot.failure = exc
            raise
        finally:
            parked = self._parked.pop((model_name, name), None)  # not adopted: stop it
            if parked is not None:
                await parked.stop()

    # -- swapping --------------------------------------------------------------------------
    def observe_swaps(self, listener: Callable[[SwapEvent], None]) -> None:
        """Call ``listener`` with every swap step (sleep, wake, start, stop, queue wait)."""
        self._swap_listeners.append(listener)

    def _swap_event(self, event: SwapEvent) -> None:
        level = f" (level {event.level})" if event.level else ""
        log.info("swap: %s:%s %s%s in %.2f s", event.model, event.variant, event.kind, level,
                 event.seconds)  # fmt: skip
        for listener in self._swap_listeners:
            listener(event)

    def _resident(self, model_name: str, name: str) -> Resident | None:
        slot = self._slots[(model_name, name)]
        if not takes_turns(self.manifest, model_name, name) or not slot.pool.replicas:
            return None
        if slot.weights_bytes is None:
            slot.weights_bytes = weights_size(self._specs.model_dir(model_name, name))
        share = self.manifest.models[model_name].serve.gpu_memory_utilization
        replica = slot.pool.replicas[0]
        return Resident(model_name, name, replica, share, slot.weights_bytes, slot.waiting)

    def _residents(self) -> list[Resident]:
        found = (self._resident(m, v) for (m, v) in self._slots)
        return [r for r in found if r is not None]

    @contextlib.asynccontextmanager
    async def _room(self, model_name: str, name: str) -> AsyncIterator[None]:
        """For a swap-managed variant about to start: hold the swap lock of the GPUs it may
        land on and put others to sleep until it fits. Nothing for other variants."""
        swapper = self.swapper
        if swapper is None or not takes_turns(self.manifest, model_name, name):
            yield
            return
        model = self.manifest.models[model_name]
        gpus = swapper.gpus_for(None)
        deadline = time.monotonic() + model.on_missing.max_wait_s
        async with swapper.serialized(gpus):
            owner = f"{model_name}:{name}#0"
            tp = model.tensor_parallel_size
            share = model.serve.gpu_memory_utilization
            await swapper.make_room(owner, gpus, share, tp, deadline)
            yield

    async def _wake(self, model_name: str, name: str) -> None:
        """Wake a sleeping swap-managed variant, putting others to sleep to make room."""
        swapper, resident = self.swapper, self._resident(model_name, name)
        assert swapper is not None and resident is not None
        model = self.manifest.models[model_name]
        deadline = time.monotonic() + model.on_missing.max_wait_s
        async with swapper.serialized(resident.gpus):
            if not resident.asleep:
                return  # woken by someone else meanwhile (or stopped: the next call starts it)
            gpus, share = resident.gpus, resident.share
            await swapper.make_room(resident.owner, gpus, share, len(gpus), deadline)
            await swapper.wake(resident)

    async def _check_packages(self, model_name: str, name: str) -> None:
        """A method whose library vLLM needs at load (bitsandbytes, GGUF) must be importable in
        vLLM's environment: said with the package to install, rather than vLLM's traceback."""
        needed = VLLM_PACKAGES.get(self.manifest.models[model_name].variants[name].method)
        if needed is None or not self.places_gpus:  # a pod's image is not ours to inspect
            return
        module, requirement = needed
        if module not in self._packages:
            self._packages[module] = await importable(self._vllm_python, module)
        if not self._packages[module]:
            raise VariantUnsupported(
                f"{model_name}:{name} needs the {module} package in vLLM's environment "
                f"({self._vllm_python}), which has none: pip install '{requirement}' there"
            )

    def _check_servable(self, model_name: str, name: str) -> None:
        """A built variant may still not be served: no kernel here (built for a quality study),
        or over its quality budget once measured."""
        unsupported = self.hardware.unsupported(self.manifest.models[model_name].variants[name])
        if unsupported:
            raise VariantUnsupported(f"{model_name}:{name} cannot be served here: {unsupported}")
        refusal = self._over_budget(model_name, name)
        if refusal:
            raise VariantOverBudget(refusal)

    def _adopt_or_launch(self, spec: LaunchSpec) -> Server:
        """The replica's server: the tuner's winner still running for this spec, else a new one."""
        for key, server in self._parked.items():
            if server.spec is spec:
                return self._parked.pop(key)
        return self._launch(spec)

    def _pool(self, model_name: str, model: Model, name: str) -> VariantPool:
        upstream = model.variants[name].upstream
        if upstream is not None:
            return VariantPool.static(f"{model_name}:{name}", upstream.url)
        opts = model.serve
        policy = RestartPolicy(
            max_restarts=opts.max_restarts,
            restart_window_s=opts.restart_window_s,
            startup_timeout_s=opts.startup_timeout_s,
        )
        return VariantPool(
            f"{model_name}:{name}",
            lambda index: self._launch_spec(model_name, name, index),
            self._adopt_or_launch,
            policy,
            prepare=lambda server: self._warm(model_name, name, server),
        )

    async def _warm(self, model_name: str, name: str, server: Server) -> None:
        """Swapping's warm cycle on a swap-managed variant's new server (``Swapper.warm``)."""
        if self.swapper is not None and takes_turns(self.manifest, model_name, name):
            await self.swapper.warm(model_name, name, server)

    def _launch_spec(self, model_name: str, name: str, index: int) -> LaunchSpec:
        parked = self._parked.get((model_name, name))
        if parked is not None and index == 0:
            return parked.spec  # the tuner's winner, still running: the first replica
        return self._specs.replica(model_name, name, index, self.kernel(model_name, name))

    # -- admin operations ------------------------------------------------------------------
    def build(self, model_name: str, name: str, start: bool = True) -> Job | None:
        """(Re)build a variant and (``start``) start it; clears an earlier failure. None:
        nothing to build."""
        model = self.manifest.models[model_name]
        slot = self._slots[(model_name, name)]
        slot.failure = None
        if self._built(model_name, model, name):
            return None
        if not model.variants[name].needs_job:  # served from the source: prepare that
            job = self.jobs.prepare_source(model_name, model)
        else:
            job = self.jobs.submit(model_name, model, name)  # the bring-up finds this same job
        if start:
            self._ensure_bring_up(model_name, name)
        return job

    async def scale(self, model_name: str, name: str, replicas: int) -> None:
        """Start (build first if needed), scale, or (``replicas=0``) drain and stop a variant."""
        slot = self._slots[(model_name, name)]
        slot.failure = None
        if replicas == 0:
            await self.stop(model_name, name)
            return
        if slot.bring_up is not None and not slot.bring_up.done():
            await asyncio.shield(slot.bring_up)
        if not slot.pool.running:
            await self._bring_up(model_name, name, replicas)
        else:
            await slot.pool.scale(replicas)
        self._release_claims(model_name, name)

    def _release_claims(self, model_name: str, name: str) -> None:
        """Give back the GPUs claimed for the variant's replicas that no longer run."""
        slot = self._slots.get((model_name, name))
        live = {f"{model_name}:{name}#{r.index}" for r in slot.pool.replicas} if slot else set()
        for owner in self.placement.claims():
            if owner.startswith(f"{model_name}:{name}#") and owner not in live:
                self.placement.release(owner)

    async def stop(self, model_name: str, name: str) -> None:
        slot = self._slots[(model_name, name)]
        drain = self.manifest.models[model_name].serve.drain_s
        await slot.pool.stop(drain)
        self._specs.release(f"{model_name}:{name}#")

    # -- reloading -------------------------------------------------------------------------
    def reload(self, manifest: Manifest) -> ManifestChange:
        """Serve ``manifest`` from now on (``serving.reload``): new variants appear, removed and
        changed ones drain and stop in the background, kept ones keep their processes. Raises
        ReloadRefused when it needs a restart; nothing changes then."""
        why = restart_needed(self.manifest, manifest)
        if why:
            raise ReloadRefused(why)
        old, change = self.manifest, compare(self.manifest, manifest)
        retired = {key: self._slots.pop(key) for key in change.removed + change.changed}
        self.manifest = manifest
        self._specs.use(manifest)
        for m, v in change.added + change.changed:
            self._slots[(m, v)] = _Slot(self._pool(m, manifest.models[m], v))
        for (m, v), slot in retired.items():
            drain = old.models[m].serve.drain_s
            task = asyncio.create_task(self._retire((m, v), slot, drain), name=f"retire-{m}:{v}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.start()  # the idle reaper, if the new manifest stops idle variants
        return change

    async def _retire(self, key: tuple[str, str], slot: _Slot, drain_s: float) -> None:
        """Drain and stop the processes of a variant the manifest no longer has as it was."""
        if slot.bring_up is not None:
            slot.bring_up.cancel()
            await asyncio.gather(slot.bring_up, return_exceptions=True)
        if slot.pool.running:
            log.info("%s:%s: left the manifest or changed; draining its replicas", *key)
        await slot.pool.stop(drain_s)
        self._release_claims(*key)

    def replica_rows(self) -> list[dict[str, Any]]:
        """Every replica's model, variant, state and circuit (cheap: for metrics)."""
        return [
            {"model": m, "variant": v, "state": r.state.value, "circuit": r.circuit}
            for (m, v), slot in self._slots.items()
            for r in slot.pool.replicas
        ]

    def residency_rows(self) -> list[tuple[str, str, str]]:
        """Every launched variant's (model, variant, residency), for metrics."""
        return [
            (m, v, residency(slot.pool.replicas).value)
            for (m, v), slot in self._slots.items()
            if self.manifest.models[m].variants[v].upstream is None
        ]

    def backends(self) -> list[dict[str, Any]]:
        return [self.describe(m, v) for (m, v) in self._slots]

    # -- background work -------------------------------------------------------------------
    def start(self) -> None:
        """Start the idle reaper (call from inside the running event loop); name the built
        variants' folders (``VariantStore.link_name``)."""
        for m, model in self.manifest.models.items():
            for v, variant in model.variants.items():
                if variant.needs_build and variant.upstream is None:
                    self._store.link_name(m, v, variant)
        idle_stops = any(m.serve.idle_stop_s for m in self.manifest.models.values())
        if idle_stops and self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="idle-reaper")

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for (m, v), slot in list(self._slots.items()):  # a reload may change them
                if self._slots.get((m, v)) is not slot:
                    continue
                idle_stop = self.manifest.models[m].serve.idle_stop_s
                if idle_stop and slot.pool.running and slot.pool.idle_for() >= idle_stop:
                    await self.stop(m, v)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*self._retiring, return_exceptions=True)
        bring_ups = [s.bring_up for s in self._slots.values() if s.bring_up is not None]
        for task in bring_ups:
            task.cancel()
        await self.jobs.aclose()
        await asyncio.gather(*bring_ups, return_exceptions=True)  # stops tuning candidates
        await asyncio.gather(*(s.pool.stop(drain_s=5.0) for s in self._slots.values()))


def _consume_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
