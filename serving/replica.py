"""One supervised vLLM replica: started, watched, restarted with backoff, drained, stopped.

A replica that was ready and then exits (a crash, ``kill -9``) is restarted after a backoff
(1 s, 2 s, 4 s, ... capped), at most ``max_restarts`` times within ``restart_window_s``; past
that it is marked failed. A replica that fails its *first* start is not retried: a bad argument
would only fail again, so the error (with vLLM's log tail) goes straight to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

from serving.circuit import Circuit
from serving.errors import BackendFailed
from serving.launcher import LaunchSpec, Server
from serving.liveness import until_hung
from serving.manifest.serve import HealthCheck

log = logging.getLogger(__name__)


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DRAINING = "draining"
    SLEEPING = "sleeping"  # draining, then going to sleep: no new requests
    ASLEEP = "asleep"  # vLLM sleep mode: the process lives, its GPU memory is given back
    WAKING = "waking"
    STOPPED = "stopped"
    FAILED = "failed"


ASLEEP_STATES = (ReplicaState.SLEEPING, ReplicaState.ASLEEP, ReplicaState.WAKING)


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    restart_window_s: float = 600.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    startup_timeout_s: float = 600.0
    health: HealthCheck = field(default_factory=HealthCheck)  # disabled: exits only


class Replica:
    def __init__(
        self,
        index: int,
        spec: Callable[[], LaunchSpec],
        launch: Callable[[LaunchSpec], Server],
        policy: RestartPolicy,
        prepare: Callable[[Server], Awaitable[None]] | None = None,
        label: str = "",
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change  # told of every state and circuit change (waiters wake)
        self.index = index
        self.label = f"{label or 'replica'} #{index}"  # in log lines: model:variant #index
        self._prepare = prepare  # run on a healthy server before it is routable
        self._spec = spec
        self._launch = launch
        self._policy = policy
        self.state = ReplicaState.STOPPED
        self.server: Server | None = None
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.error: str | None = None
        self.failure: BackendFailed | None = None  # the last start failure, with vLLM's log tail
        self._monitor: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._circuit = Circuit(self.label, self._changed, clock)
        self.sleep_level: int | None = None  # while asleep: 1 (weights in host RAM) or 2
        self.awake_since = 0.0  # monotonic time it last became ready (start or wake)

    @property
    def state(self) -> ReplicaState:
        return self._state

    @state.setter
    def state(self, value: ReplicaState) -> None:
        self._state = value
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    @property
    def routable(self) -> bool:
        return self.state is ReplicaState.READY and self._circuit.admits()

    # -- circuit breaker (serving.circuit) -------------------------------------------------
    def record_failure(self, threshold: int, open_s: float) -> None:
        """Count a failed request; ``threshold`` in a row keep it out of routing ``open_s``."""
        self._circuit.failure(threshold, open_s)

    def record_success(self) -> None:
        self._circuit.success()

    def open_for(self) -> float:
        """Seconds until an open circuit lets one request try again (0: not open)."""
        return self._circuit.open_for()

    @property
    def circuit(self) -> str:
        return self._circuit.state

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def served_names(self) -> tuple[str, ...]:
        """The model names its server was started to answer to (``--served-model-name``)."""
        return self.server.spec.served_names if self.server is not None else ()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """First start: raise BackendFailed with the log tail if vLLM never becomes healthy."""
        self.state, self.error = ReplicaState.STARTING, None
        try:
            await self._spawn()
        except asyncio.CancelledError:  # a gateway stopping, a variant retired: not a failure
            self.state, self.error = ReplicaState.STOPPED, None
            log.info("vLLM %s: its start was cancelled", self.label)
            raise
        except BaseException as exc:
            self.state, self.error = ReplicaState.FAILED, str(exc)
            self.failure = exc if isinstance(exc, BackendFailed) else None
            tail = self.failure.log_tail.splitlines()[-5:] if self.failure else []
            log.error("vLLM %s failed to start: %s%s", self.label, exc,
                      "".join(f"\n  | {line}" for line in tail))  # fmt: skip
            raise
        self._monitor = asyncio.create_task(self._watch(), name=f"replica-{self.index}")

    async def _spawn(self) -> None:
        spec = self._spec()
        kernel = spec.env.get("VLLM_DISABLED_KERNELS")
        log.info("vLLM %s starting on port %s: %s%s%s", self.label, spec.port, spec.model_dir,
                 f", --quantization {spec.quantization}" if spec.quantization else "",
                 f", kernels disabled: {kernel}" if kernel else "")  # fmt: skip
        self.server = self._launch(spec)
        await self.server.start(self._policy.startup_timeout_s)
        if self._prepare is not None:
            try:
                await self._prepare(self.server)
            except BaseException:
                await self.server.stop()
                raise
        self.state, self.sleep_level = ReplicaState.READY, None
        self.last_used = self.awake_since = time.monotonic()
        took = (self.server.ready_at or 0) - (self.server.started_at or 0)
        log.info("vLLM %s ready in %.1f s (pid %s)", self.label, took, self.server.pid)

    async def _watch(self) -> None:
        """Wait for the process to exit (or hang); unless we stopped it, restart it with
        backoff."""
        while True:
            assert self.server is not None
            code = await self._exit_or_hang(self.server)
            if self.state in (ReplicaState.DRAINING, ReplicaState.STOPPED):
                return
            if self.state in ASLEEP_STATES:  # it held no GPU memory: the next wake starts it
                log.warning("vLLM %s exited with code %s while asleep", self.label, code)
                await self.server.stop(grace_s=0)
                self.state, self.sleep_level = ReplicaState.STOPPED, None
                return
            log.warning("vLLM %s exited with code %s; restarting it", self.label, code)
            await self.server.stop(grace_s=0)  # reap what is left of its process group
            if not await self._restart():
                return

    async def _exit_or_hang(self, server: Server) -> int:
        """The server's exit code. A local server that stops answering ``/health`` is killed
        first: a hung vLLM takes connections and never answers, a crash in all but name.
        (Servers with no local process, on Kubernetes, are left to its liveness probes.)"""
        probe = self._policy.health
        if not probe.enabled or server.pid is None:
            return await server.wait()
        exited = asyncio.create_task(server.wait())
        hung = asyncio.create_task(until_hung(server.url, probe, self._serving))
        try:
            await asyncio.wait({exited, hung}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                self.error = hung.result()
                log.warning("vLLM %s: %s; killing it (pid %s) to restart it", self.label,
                            self.error, server.pid)  # fmt: skip
                await server.stop(grace_s=0)
            return await exited
        finally:
            for task in (exited, hung):
                task.cancel()

    def _serving(self) -> bool:
        return self.state is ReplicaState.READY

    async def _restart(self) -> bool:
        policy = self._policy
        while True:
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > policy.restart_window_s:
                self._restart_times.popleft()
            if len(self._restart_times) >= policy.max_restarts:
                self.state = ReplicaState.FAILED
                self.error = (
                    f"crashed {policy.max_restarts} times within {policy.restart_window_s:.0f} s;"
                    f" not restarting (last error: {self.error or 'process exited'})"
                )
                tail = self.failure.log_tail if self.failure is not None else ""
                self.failure = BackendFailed(self.error, log_tail=tail)
                log.error("vLLM %s failed: %s", self.label, self.error)
                return False
            self.state = ReplicaState.RESTARTING
            delay = min(policy.backoff_s * 2 ** len(self._restart_times), policy.backoff_max_s)
            self._restart_times.append(now)
            self.restarts += 1
            log.info("vLLM %s: restart %d in %.0f s", self.label, self.restarts, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                return True
            except BackendFailed as exc:
                self.error, self.failure = str(exc), exc

    async def stop(self, drain_s: float = 30.0) -> None:
        """Stop routing to it, wait up to ``drain_s`` for in-flight requests, then stop."""
        if self.state in (ReplicaState.STOPPED, ReplicaState.FAILED) and not self._alive():
            self.state = ReplicaState.STOPPED
            return
        self.state = ReplicaState.DRAINING
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_s)
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.server is not None:
            await self.server.stop()
        self.state = ReplicaState.STOPPED

    # -- sleep mode ------------------------------------------------------------------------
    async def sleep(self, level: int, drain_s: float) -> bool:
        """Stop routing to it, let in-flight requests finish (up to ``drain_s``), then put
        vLLM to sleep (``level`` 0: stop the process). False, and ready again, if requests
        were still running then: a replica is never put to sleep while it streams. A failed
        sleep stops the process instead (its GPU memory is given back either way)."""
        if self.state is not ReplicaState.READY:
            return False
        self.state = ReplicaState.SLEEPING
        try:
            await asyncio.wait_for(self._idle.wait(), drain_s)
        except TimeoutError:
            self.state = ReplicaState.READY
            return False
        except BaseException:
            self.state = ReplicaState.READY
            raise
        assert self.server is not None
        if level == 0:  # no sleep mode here: stop the process; waking is a cold start
            await self._stop_process()
            return True
        try:
            await self.server.sleep(level)
        except BackendFailed as exc:
            log.warning("vLLM %s did not go to sleep (%s); stopping it", self.label, exc)
            await self._stop_process()
            return True
        self.state, self.sleep_level = ReplicaState.ASLEEP, level
        return True

    async def wake(self) -> None:
        """Wake it; if vLLM cannot, restart the process (a cold start). Raises BackendFailed
        (state failed) only if that fails too."""
        if self.state is ReplicaState.READY:
            return
        level = self.sleep_level or 1
        self.state = ReplicaState.WAKING
        try:
            assert self.server is not None and self.server.alive()
            await self.server.wake_up(level)
            self.state, self.sleep_level = ReplicaState.READY, None
            self.last_used = self.awake_since = time.monotonic()
            return
        except (BackendFailed, AssertionError) as exc:
            log.warning("vLLM %s did not wake (%s); restarting it", self.label, exc)
            note = f"wake failed, restarted: {exc}"
        await self._stop_process()
        await self.start()
        self.error = note
        self.restarts += 1

    async def _stop_process(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        if self.server is not None:
            await self.server.stop()
        self.state, self.sleep_level = ReplicaState.STOPPED, None

    def _alive(self) -> bool:
        return self.server is not None and self.server.alive()

    # -- traffic ---------------------------------------------------------------------------
    def acquire(self) -> bool:
        """A request is sent to it; whether that request is its half-open circuit's trial."""
        self.in_flight += 1
        self._idle.clear()
        self.last_used = time.monotonic()
        return self._circuit.begin()

    def release(self, trial: bool = False) -> None:
        self._circuit.end(trial)
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self.in_flight == 0:
            self._idle.set()

    def describe(self) -> dict[str, Any]:
        server = self.server
        alive = server is not None and server.alive()
        return {
            "index": self.index,
            "state": self.state.value,
            "url": server.url if server else None,
            "port": server.spec.port if server else None,
            "pid": server.pid if alive and server else None,
            "gpus": server.spec.env.get("CUDA_VISIBLE_DEVICES") if server else None,
            "uptime_s": round(time.time() - server.ready_at, 1)
            if alive and server and server.ready_at
            else None,
            "ready_s": round(server.ready_at - server.started_at, 1)
            if server and server.ready_at and server.started_at
            else None,
            "restarts": self.restarts,
            "sleep_level": self.sleep_level,
            "in_flight": self.in_flight,
            "circuit": self.circuit,
            "log": str(server.spec.log_path) if server else None,
            "error": self.error,
        }


def unlaunchable(*_: object) -> NoReturn:
    raise AssertionError("a static upstream is never launched")
