"""One variant's controller: its lifecycle from missing to ready, and the requests waiting on it.

missing -> building -> built -> starting -> ready <-> asleep -> stopped, or failed (with its
cause, until an admin retries; a backend not ready, until a request asks again in time). One
bring-up at a time builds the variant if missing (one job, however many requests wait), picks
its kernel, makes room on swap-managed GPUs, and starts its replicas; waiting requests wake when
its replicas change (``VariantPool.changed``), not on a timer. A variant this machine cannot
serve, or over its quality budget once measured, is refused with the reason, never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

from serving import kernels
from serving.errors import (
    BackendFailed,
    BackendNotReady,
    QuantgateError,
    VariantOverBudget,
    VariantUnavailable,
    VariantUnsupported,
    still_holds,
)
from serving.fleet.context import FleetContext
from serving.fleet.status import VariantState
from serving.fleet.swaps import resident_of
from serving.job import Job
from serving.launcher import LaunchSpec, Server
from serving.manifest import Model, Variant
from serving.pool import VariantPool
from serving.precheck import check_source
from serving.quality import over_budget
from serving.replica import Replica, RestartPolicy
from serving.swapping import SwapEvent

log = logging.getLogger("serving.fleet")
WAKE_CHECK_S = 1.0  # a waiter looks again at least this often (an open circuit closes in time)


class VariantController:
    def __init__(self, ctx: FleetContext, model_name: str, name: str) -> None:
        self.ctx = ctx
        self.model_name, self.name = model_name, name
        self.label = f"{model_name}:{name}"
        self.bring_up_task: asyncio.Task[None] | None = None
        self.failure: QuantgateError | None = None
        self.kernel_choice: kernels.KernelChoice | None = None  # optimize_for auto may switch it
        self.offered: kernels.KernelChoice | None = None  # the checkpoint's, before any tuning
        self.waiting = 0  # requests waiting for it to wake or start (swapping's queue)
        self.weights_bytes: int | None = None  # its weights on disk, once asked (swapping)
        self._parked: Server | None = None  # the tuner's winner, kept running for replica 0
        self.pool = self._new_pool()

    @property
    def model(self) -> Model:
        return self.ctx.manifest.models[self.model_name]

    @property
    def variant(self) -> Variant:
        return self.model.variants[self.name]

    # -- what it is ------------------------------------------------------------------------
    def kernel(self) -> kernels.KernelChoice:
        """The kernel it gets here: from its checkpoint once built, else from its recipe."""
        if self.variant.upstream is not None:
            return kernels.KernelChoice(None, "external", reason="an already-running upstream")
        unsupported = self.ctx.hardware.unsupported(self.variant)
        if unsupported:
            return kernels.KernelChoice(None, None, reason=unsupported)
        if self.kernel_choice is None:
            return kernels.choose(kernels.planned_scheme(self.variant), self.ctx.hardware)
        return self.kernel_choice

    def state(self) -> VariantState:
        pool = self.pool
        if not self.kernel().supported:
            return VariantState.UNSUPPORTED
        if self.over_budget():
            return VariantState.OVER_BUDGET
        if self.failure is not None or pool.failed():
            return VariantState.FAILED
        if pool.ready():
            return VariantState.READY
        if pool.open_for() is not None:
            return VariantState.UNREACHABLE
        if pool.asleep():
            return VariantState.ASLEEP
        if pool.running or (self.model_name, self.name) in self.ctx.tuning.active:
            return VariantState.STARTING
        if self.ctx.jobs.active(self.model_name, self.variant) or self._preparing():
            return VariantState.BUILDING
        return VariantState.BUILT if self.built() else VariantState.MISSING

    def built(self) -> bool:
        variant = self.variant
        if variant.upstream is not None:
            return True
        if not variant.needs_job:  # served from the source: imported or downloaded yet?
            return self.ctx.jobs.source_ready(self.model)
        return self.ctx.store.is_built(self.model_name, variant)

    def _preparing(self) -> bool:
        """Whether the model's source is being imported or downloaded now."""
        jobs = self.ctx.jobs
        job = None if jobs.source_ready(self.model) else jobs.source_job(self.model)
        return job is not None and not job.done.is_set()

    def over_budget(self) -> str | None:
        """Why the quality gate refuses the built variant, or None (also: not built yet)."""
        variant = self.variant
        if variant.max_ppl_increase is None:
            return None
        reason = over_budget(variant, self.ctx.store.report(self.model_name, variant))
        return f"{self.label} is not served: {reason}" if reason else None

    def usable(self) -> bool:
        """Neither refused (kernel, quality) nor failed: worth bringing up."""
        failed = self.failure is not None or self.pool.failed()
        return self.kernel().supported and not self.over_budget() and not failed

    def takes_turns(self) -> bool:
        return self.ctx.swaps.takes_turns(self.ctx.manifest, self.model_name, self.name)

    # -- waiting for a replica -------------------------------------------------------------
    def refuse_early(self) -> None:
        """Raise at once what a request for it would end in: unsupported, over budget,
        failed, or every replica's circuit open (no client is held for a timeout)."""
        kernel = self.kernel()
        if not kernel.supported:
            raise VariantUnsupported(f"{self.label} cannot be served here: {kernel.reason}")
        if refusal := self.over_budget():
            raise VariantOverBudget(refusal)
        self.failure = still_holds(self.failure)  # a backend not ready: asked again in time
        if self.failure is not None:
            raise self.failure
        failure = self.pool.failure()  # every replica crashed past its restarts
        if failure is not None:
            raise self._failed(failure)
        closed_in = self.pool.open_for()
        if closed_in is not None:
            now = "one request is trying it now" if closed_in == 0 else (
                f"the next try in {closed_in:.1f} s")  # fmt: skip
            raise VariantUnavailable(
                f"{self.label} is unreachable: its circuit is open (failed requests or health "
                f"checks); {now}",
                max(1, math.ceil(closed_in)),
            )

    async def wait_for_replica(self, exclude: frozenset[int], affinity: str | None) -> Replica:
        """A ready replica once the bring-up gives one, within ``on_missing``'s bound."""
        self.refuse_early()
        if self.pool.dormant():
            self.ensure_bring_up()
        if self.model.on_missing.action == "reject":
            raise self.unavailable("try again later")
        turns = self.takes_turns()
        if turns:
            queue = self.ctx.swaps.swapper.policy.queue_size if self.ctx.swaps.swapper else 0
            if self.waiting >= queue:
                raise self.unavailable(f"{self.waiting} requests already wait for it (queue full)")
            self.waiting += 1
        try:
            return await self._wait_in_line(exclude, affinity, turns)
        finally:
            if turns:
                self.waiting -= 1

    async def _wait_in_line(
        self, exclude: frozenset[int], affinity: str | None, turns: bool
    ) -> Replica:
        max_wait = self.model.on_missing.max_wait_s
        start = time.monotonic()
        deadline = start + max_wait
        while (left := deadline - time.monotonic()) > 0:
            replica = self.pool.pick(exclude, affinity) or self.pool.pick()
            if replica is not None:
                if turns:
                    waited = time.monotonic() - start
                    self.ctx.swaps.event(
                        SwapEvent(self.model_name, self.name, "queue_wait", waited)
                    )
                return replica
            self._raise_failure()
            idle = self.bring_up_task is None or self.bring_up_task.done()
            if idle and self.pool.dormant():
                self.ensure_bring_up()
            await self.pool.changed.wait(min(left, WAKE_CHECK_S))
        raise self.unavailable(f"waited {max_wait:.0f} s")

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.bring_up_task is not None and not self.bring_up_task.done():
            return  # a bring-up that fails records why (self.failure), then wakes the waiters
        failure = self.pool.failure()  # replicas that failed after their start
        if failure is not None:
            raise self._failed(failure)

    def _failed(self, failure: BackendFailed) -> BackendFailed:
        if isinstance(failure, BackendNotReady):
            return failure  # says when it is asked again
        return BackendFailed(
            f"every replica of {self.label} has failed: {failure}; "
            f"POST /admin/variants/{self.model_name}/{self.name}/build retries it",
            log_tail=failure.log_tail,
        )

    def unavailable(self, detail: str) -> VariantUnavailable:
        retry = self.model.on_missing.retry_after_s
        return VariantUnavailable(f"{self.label} is {self.state().value}; {detail}", retry)

    # -- bringing it up --------------------------------------------------------------------
    def ensure_bring_up(self, replicas: int | None = None) -> asyncio.Task[None]:
        if self.bring_up_task is None or self.bring_up_task.done():
            self.bring_up_task = asyncio.create_task(self.bring_up(replicas))
            self.bring_up_task.add_done_callback(self._brought_up)
        return self.bring_up_task

    def _brought_up(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; waiters read self.failure
        self.pool.changed.notify()

    async def bring_up(self, replicas: int | None = None) -> None:
        try:
            if self.pool.asleep():
                resident = resident_of(self)
                assert resident is not None
                await self.ctx.swaps.wake(resident, self.model.on_missing.max_wait_s)
                return
            await self._prepare()
            async with self._room():
                await self._tune()
                await self._start(replicas or self.model.serve.replicas)
        except VariantUnavailable:
            # swapping's "try again" (the GPU's variant still streams): pause, no failure
            assert self.ctx.swaps.swapper is not None
            await asyncio.sleep(min(1.0, self.ctx.swaps.swapper.policy.drain_timeout_s))
            raise
        except QuantgateError as exc:
            self.failure = exc
            log.warning("%s not brought up (%s): %s", self.label, self.state().value, exc)
            raise
        except Exception as exc:  # a fault of ours: said once, not retried by every request
            self.failure = BackendFailed(f"{self.label} could not be brought up: {exc!r}")
            log.exception("%s not brought up: unexpected %r", self.label, exc)
            raise self.failure from exc
        finally:
            parked, self._parked = self._parked, None  # not adopted: stop it
            if parked is not None:
                await parked.stop()

    async def _prepare(self) -> None:
        """Packages vLLM needs, the checkpoint (built or the source prepared), the kernel."""
        if self.ctx.places_gpus:  # a pod's image is not ours to inspect
            await self.ctx.packages.check(self.label, self.variant.method)
        if not self.built():
            job = self.submit()
            if job is not None:
                await job.wait()
        self._check_servable()
        at_load = self.variant.serve_quantization  # fp8, bitsandbytes NF4: quantized at load
        checkpoint = self.ctx.specs.model_dir(self.model_name, self.name)
        self.offered = self.kernel_choice = kernels.choose(
            kernels.checkpoint_scheme(checkpoint, at_load), self.ctx.hardware
        )
        if not self.kernel_choice.supported:
            raise VariantUnsupported(f"{self.label}: {self.kernel_choice.reason}")

    def submit(self) -> Job | None:
        """The job that makes it servable: its build, or its source's import or download."""
        if self.variant.needs_job:
            return self.ctx.jobs.submit(self.model_name, self.model, self.name)
        return self.ctx.jobs.prepare_source(self.model_name, self.model)

    def _check_servable(self) -> None:
        """A built variant may still not be served: no kernel here (built for a quality study),
        or over its quality budget once measured, or its local source folder gone."""
        if not self.variant.needs_job and self.model.source and self.model.origin.prepared_here:
            check_source(self.model.origin)  # served from a local folder: is it (still) there?
        if unsupported := self.ctx.hardware.unsupported(self.variant):
            raise VariantUnsupported(f"{self.label} cannot be served here: {unsupported}")
        if refusal := self.over_budget():
            raise VariantOverBudget(refusal)

    async def _tune(self) -> None:
        """Measure the kernels vLLM offers (GPUs, once); keep the winner running (parked)."""
        assert self.kernel_choice is not None
        try:
            self.kernel_choice, self._parked = await self.ctx.tuning.resolve(
                self.model_name, self.name, self.model, self.kernel_choice,
                lambda: self._launch_spec(0), self.ctx.specs.side,
            )  # fmt: skip
        finally:
            self.ctx.specs.release(f"{self.label}#tune")

    async def _start(self, replicas: int) -> None:
        t0 = time.monotonic()
        await self.pool.scale(replicas)
        kernel = self.kernel()
        took = time.monotonic() - t0
        log.info("%s ready: %d replica(s), kernel %s (%s), up in %.1f s", self.label,
                 len(self.pool.ready()), kernel.kernel, kernel.reason, took)  # fmt: skip
        if resident_of(self) is not None:  # swap-managed
            self.ctx.swaps.event(SwapEvent(self.model_name, self.name, "start", took))

    @contextlib.asynccontextmanager
    async def _room(self) -> AsyncIterator[None]:
        """Swap-managed: hold the GPUs' swap lock and make room before it starts."""
        if not self.takes_turns():
            yield
            return
        model = self.model
        share, tp = model.serve.gpu_memory_utilization, model.tensor_parallel_size
        async with self.ctx.swaps.room(f"{self.label}#0", share, tp, model.on_missing.max_wait_s):
            yield

    # -- its replicas ----------------------------------------------------------------------
    def _new_pool(self) -> VariantPool:
        upstream = self.variant.upstream
        if upstream is not None:
            return VariantPool.static(self.label, upstream, self.model.serve.health_check)
        opts = self.model.serve
        policy = RestartPolicy(
            max_restarts=opts.max_restarts,
            restart_window_s=opts.restart_window_s,
            startup_timeout_s=opts.startup_timeout_s,
            health=opts.health_check,
        )
        return VariantPool(
            self.label, self._launch_spec, self._adopt_or_launch, policy, prepare=self._warm
        )

    def _launch_spec(self, index: int) -> LaunchSpec:
        if self._parked is not None and index == 0:
            return self._parked.spec  # the tuner's winner, still running: the first replica
        return self.ctx.specs.replica(self.model_name, self.name, index, self.kernel())

    def _adopt_or_launch(self, spec: LaunchSpec) -> Server:
        """The replica's server: the tuner's winner still running for this spec, else new."""
        parked = self._parked
        if parked is not None and parked.spec is spec:
            self._parked = None
            return parked
        return self.ctx.launch(spec)

    async def _warm(self, server: Server) -> None:
        """Before a new server takes requests: its first measure (FP8), swapping's warm cycle."""
        await self._measure_served(server)
        swapper = self.ctx.swaps.swapper
        if swapper is not None and self.takes_turns():
            await swapper.warm(self.model_name, self.name, server)

    async def _measure_served(self, server: Server) -> None:
        """Quantized by vLLM at load, not measured yet: measured through it (a job), then
        refused if over its quality budget."""
        variant = self.variant
        if not variant.measured_when_served or self.ctx.store.report(self.model_name, variant):
            return
        if not self.ctx.runs_jobs and variant.max_ppl_increase is None:  # no budget to hold
            log.info("%s: served unmeasured: no job runs here", self.label)
            return
        served = {"url": server.url, "model": server.spec.served_names[0]}
        log.info("%s: measuring its perplexity through %s first", self.label, server.url)
        await self.ctx.jobs.submit(self.model_name, self.model, self.name, served).wait()
        self._check_servable()

    async def scale(self, replicas: int) -> None:
        """Start (build first if needed) or scale; 0 drains and stops."""
        self.failure = None
        if replicas == 0:
            await self.stop()
            return
        if self.bring_up_task is not None and not self.bring_up_task.done():
            await asyncio.shield(self.bring_up_task)
        if not self.pool.running:  # the one bring-up, which requests arriving now wait for
            await asyncio.shield(self.ensure_bring_up(replicas))
        else:
            await self.pool.scale(replicas)

    async def stop(self, drain_s: float | None = None) -> None:
        drain = self.model.serve.drain_s if drain_s is None else drain_s
        await self.pool.stop(drain)
        self.ctx.specs.release(f"{self.label}#")

    async def retire(self, drain_s: float) -> None:
        """Drain and stop: the manifest no longer has it as it was (a reload)."""
        if self.bring_up_task is not None:
            self.bring_up_task.cancel()
            await asyncio.gather(self.bring_up_task, return_exceptions=True)
        if self.pool.running:
            log.info("%s: left the manifest or changed; draining its replicas", self.label)
        await self.pool.stop(drain_s)
