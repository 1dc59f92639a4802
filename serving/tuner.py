"""Kernel tuning: measure each kernel vLLM offers for a variant on this GPU, launch the winner.

On Hopper vLLM picks Machete for W4A16 weights, yet Marlin can be faster for a given shape and
batch (``serving.kernels``). At a variant's first launch on a GPU type, the tuner starts vLLM
once per candidate kernel (``VLLM_DISABLED_KERNELS`` names the other candidates; vLLM's default
runs with no change), runs a short fixed decode benchmark against it, reads the kernel vLLM
really used from its log (``Using <Kernel> for <Method>``) and stops it. The result goes into
the variant's report under ``kernel_tuning["<GPU name>|vllm <version>"]`` and every later
launch on that GPU type and vLLM version reuses it.

Winner rule (``serve.optimize_for``): ``latency`` launches the kernel with the most tokens/s at
1 stream, ``throughput`` the one with the most at 64 streams; ``balanced`` (the default) never
serves slower than vLLM's own choice; ``auto`` starts as ``balanced`` (or on the kernel it
followed the load to last, ``followed``) and then follows the load the variant sees
(``serving.kernel_load``, ``serving.fleet.follow``). A candidate is eligible
when its tokens/s at 1 stream and at 64 streams are both at least those of vLLM's default;
among the eligible the highest geometric mean of the two wins, ties going to the default. A
tuned launch thus never serves slower than an untuned one at either measured load; a kernel
that is faster at batch 1 but slower at 64 streams is not chosen there (``optimize_for:
latency`` chooses it, ``auto`` once the load is single streams). The measurements are kept
per kernel, so a changed ``optimize_for`` picks again without measuring.

Candidates run alternatives first and vLLM's default last. When the last one wins (under this
rule, the default whenever no alternative beats it at both loads) its server keeps running and
becomes the variant's first replica: one vLLM start (~2 min for an 8B model) saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from serving.decode_bench import DecodeBench
from serving.errors import BackendFailed, VariantUnsupported
from serving.hardware import Hardware
from serving.kernels import KernelChoice
from serving.launcher import LaunchSpec, Server
from serving.manifest import Model
from serving.store import VariantStore

log = logging.getLogger(__name__)
Goal = Literal["balanced", "latency", "throughput", "auto"]  # serve.optimize_for

DISABLED = "VLLM_DISABLED_KERNELS"
AUTO = "auto"
RULE = (
    "eligible: tok/s at 1 and at 64 streams both >= vLLM's default; "
    "winner: highest geometric mean of the two among the eligible (ties: the default)"
)
_KERNEL_LINE = re.compile(r"Using (\w+Kernel) for (\w+)")


def candidates(choice: KernelChoice) -> list[str]:
    """The kernels to measure, in the order they run: alternatives first, vLLM's default last."""
    default = [choice.kernel] if choice.kernel else []
    return [*choice.alternatives, *default]


def kernel_env(choice: KernelChoice, kernel: str) -> dict[str, str]:
    """The environment that makes vLLM use ``kernel``: the other candidates disabled."""
    if kernel == choice.kernel:
        return dict(choice.env)
    others = [k for k in candidates(choice) if k != kernel]
    return {**choice.env, DISABLED: ",".join(others)}


def pinned(choice: KernelChoice, kernel: str) -> KernelChoice:
    """``choice`` with ``kernel`` forced (``serve.kernel``)."""
    offered = candidates(choice)
    if kernel not in offered:
        raise VariantUnsupported(
            f"serve.kernel {kernel} is not a kernel vLLM offers for this variant here "
            f"(candidates: {', '.join(offered)})"
        )
    reason = f"pinned by serve.kernel (vLLM's default here: {choice.kernel})"
    return _launching(choice, kernel, kernel, reason)


def from_stored(
    choice: KernelChoice, key: str, stored: dict[str, Any], goal: Goal = "balanced"
) -> KernelChoice | None:
    """The winner of an earlier tuning for ``goal`` (its measurements are goal-free), or None
    if it no longer matches the candidates."""
    measured = _stored_measurements(choice, stored)
    default = candidates(choice)[-1] if candidates(choice) else ""
    winner = pick_winner(default, measured, goal) if measured else stored.get("winner")
    how = f"tuned on {key} for {goal}"
    if goal == "auto" and stored.get("followed") in measured:  # the load it followed last
        winner, how = stored["followed"], f"on {key}, the kernel auto followed the load to last"
    if winner not in candidates(choice):
        return None
    used = measured[winner].used if winner in measured else stored.get("kernel")
    reason = f"{how}: {winner} (vLLM's default: {choice.kernel})"
    return _launching(choice, winner, str(used or winner), reason)


def stored_rates(choice: KernelChoice, stored: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Tokens/s at 1 and at 64 streams of each candidate of ``choice`` an earlier tuning
    measured (``serving.kernel_load``)."""
    measured = _stored_measurements(choice, stored)
    return {k: (m.tok_s_1, m.tok_s_64) for k, m in measured.items()}


def _stored_measurements(choice: KernelChoice, stored: dict[str, Any]) -> dict[str, Measurement]:
    """The candidates of ``choice`` an earlier tuning measured (not those that failed)."""
    rows = (stored.get("candidates") or {}).items()
    return {k: Measurement(r["tok_s_1"], r["tok_s_64"], r.get("ready_s", 0.0), r.get("used"))
            for k, r in rows if "tok_s_1" in r and k in candidates(choice)}  # fmt: skip


def switched(choice: KernelChoice, stored: dict[str, Any], kernel: str, why: str) -> KernelChoice:
    """``choice`` launched with ``kernel``, a measured candidate (``optimize_for: auto``)."""
    used = ((stored.get("candidates") or {}).get(kernel) or {}).get("used")
    reason = f"{why} (vLLM's default: {choice.kernel})"
    return _launching(choice, kernel, str(used or kernel), reason)


def _launching(choice: KernelChoice, kernel: str, used: str, reason: str) -> KernelChoice:
    """``choice`` as launched with ``kernel`` (logged by vLLM as ``used``); the alternatives
    become the candidates not chosen."""
    others = tuple(k for k in candidates(choice) if k != kernel)
    env = kernel_env(choice, kernel)
    return dataclasses.replace(choice, kernel=used, alternatives=others, env=env, reason=reason)


def tuning_key(hardware: Hardware, spec: LaunchSpec, vllm_version: str) -> str:
    """``<GPU name>|vllm <version>`` for the GPUs the spec runs on (`` xN`` for N > 1)."""
    visible = spec.gpus
    names = {g.index: g.name for g in hardware.gpus}
    gpu = names.get(visible[0], "gpu") if visible else "gpu"
    where = gpu if len(visible) <= 1 else f"{gpu} x{len(visible)}"
    return f"{where}|vllm {vllm_version}"


def used_kernel(log_text: str) -> str | None:
    """The linear kernel named in vLLM's log (``Using <Kernel> for <Method>``), if any."""
    found = _KERNEL_LINE.search(log_text)
    return found.group(1) if found else None


async def vllm_version(python: Path) -> str:
    """vLLM's version in the environment of ``python``, from its package metadata."""
    code = "import importlib.metadata as m; print(m.version('vllm'))"
    with contextlib.suppress(OSError):
        proc = await asyncio.create_subprocess_exec(
            str(python), "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        if proc.returncode == 0 and out.strip():
            return out.decode().strip()
    return "unknown"


@dataclass(frozen=True)
class Measurement:
    tok_s_1: float
    tok_s_64: float
    ready_s: float
    used: str | None  # the kernel vLLM logged
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES of the run

    @property
    def score(self) -> float:
        return math.sqrt(max(self.tok_s_1, 0.0) * max(self.tok_s_64, 0.0))


def pick_winner(default: str, measured: dict[str, Measurement], goal: Goal = "balanced") -> str:
    """The winner for ``goal`` (``serve.optimize_for``): ``latency``, the most tokens/s at 1
    stream; ``throughput``, at 64 streams; ``balanced`` and ``auto`` (its first launch), the
    rule above. Ties go to vLLM's
    default; without a default measurement, the best for the goal."""
    if not measured:
        raise ValueError("no candidate was measured")
    if goal in ("latency", "throughput"):
        at_one = goal == "latency"

        def speed(k: str) -> tuple[float, bool]:
            m = measured[k]
            return (m.tok_s_1 if at_one else m.tok_s_64), k == default

        return max(measured, key=speed)
    base = measured.get(default)
    eligible = [
        k
        for k, m in measured.items()
        if base is None or (m.tok_s_1 >= base.tok_s_1 and m.tok_s_64 >= base.tok_s_64)
    ]
    return max(eligible, key=lambda k: (measured[k].score, k == default))


@dataclass(frozen=True)
class Tuned:
    choice: KernelChoice  # the winner, to launch with
    result: dict[str, Any]  # what goes into the report
    server: Server | None  # the winner's server, still running, when it ran last


class KernelTuner:
    def __init__(
        self,
        launch: Callable[[LaunchSpec], Server],
        startup_timeout_s: float,
        bench: DecodeBench | None = None,
    ) -> None:
        self._launch = launch
        self._timeout = startup_timeout_s
        self._bench = bench or DecodeBench()

    async def tune(
        self,
        choice: KernelChoice,
        spec: LaunchSpec,
        key: str,
        side: Callable[[int], LaunchSpec | None] | None = None,
        goal: Goal = "balanced",
    ) -> Tuned:
        """Measure every candidate of ``choice``; BackendFailed if none ran.

        vLLM's default runs as ``spec`` (the first replica's GPUs and port). ``side(i)`` may
        give an alternative GPUs of its own, idle and of the same kind: such alternatives start
        together with the default (one start-up time instead of several); the others run one
        by one on ``spec`` before it. Benchmarks always run one server at a time."""
        default = candidates(choice)[-1]
        placed = {k: side(i) if side else None for i, k in enumerate(choice.alternatives)}
        alone = [k for k, s in placed.items() if s is None]
        group = [(k, s) for k, s in placed.items() if s is not None] + [(default, spec)]
        measured: dict[str, Measurement] = {}
        errors: dict[str, str] = {}
        servers: list[Server] = []
        kept: Server | None = None
        try:
            for kernel in alone:
                servers.append(self._launch(_candidate_spec(spec, choice, kernel)))
                await self._measure(kernel, servers[-1], measured, errors, keep=False)
            names = [k for k, _ in group]
            log.info("tuning %s on %s: starting %s", spec.served_names[0], key, names)
            together = [self._launch(_candidate_spec(s, choice, k)) for k, s in group]
            servers += together
            started = await asyncio.gather(*(self._start(server) for server in together))
            for kernel, server, error in zip(names, together, started, strict=True):
                if error is not None:
                    errors[kernel] = error
                    continue
                await self._measure(kernel, server, measured, errors, keep=kernel == default)
            if not measured:
                raise BackendFailed(f"kernel tuning: every candidate failed: {errors}")
            winner = pick_winner(default, measured, goal)
            kept = together[-1] if winner == default and default in measured else None
        finally:
            for server in servers:
                if server is not kept:
                    await server.stop()
        return self._outcome(choice, key, winner, measured, errors, kept, goal)

    async def _start(self, server: Server) -> str | None:
        """Start a candidate; an error message if it cannot run."""
        try:
            await server.start(self._timeout)
        except BackendFailed as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _measure(
        self,
        kernel: str,
        server: Server,
        measured: dict[str, Measurement],
        errors: dict[str, str],
        keep: bool,
    ) -> None:
        """Start (if not yet), benchmark and read the log of one candidate; stop it unless
        ``keep``. A candidate that cannot run is recorded in ``errors``."""
        log.info("tuning: measuring %s", kernel)
        try:
            await server.start(self._timeout)
            one, many = await self._bench.run(server.url, server.spec.served_names[0])
        except (BackendFailed, httpx.HTTPError, KeyError, ValueError) as exc:
            await server.stop()
            errors[kernel] = f"{type(exc).__name__}: {exc}"
            return
        ready = (server.ready_at or 0.0) - (server.started_at or 0.0)
        text = server.spec.log_path.read_text(encoding="utf-8", errors="replace")
        gpus = server.spec.env.get("CUDA_VISIBLE_DEVICES")
        measured[kernel] = Measurement(
            round(one, 1), round(many, 1), round(ready, 1), used_kernel(text), gpus
        )
        if not keep:
            await server.stop()

    def _outcome(
        self,
        choice: KernelChoice,
        key: str,
        winner: str,
        measured: dict[str, Measurement],
        errors: dict[str, str],
        kept: Server | None,
        goal: Goal,
    ) -> Tuned:
        rows: dict[str, dict[str, Any]] = {k: {"error": e} for k, e in errors.items()}
        for k, m in measured.items():
            rows[k] = {"tok_s_1": m.tok_s_1, "tok_s_64": m.tok_s_64, "ready_s": m.ready_s,
                       "used": m.used, "gpus": m.gpus}  # fmt: skip
        used = measured[winner].used or winner
        result = {
            "candidates": rows,
            "winner": winner,
            "kernel": used,
            "default": choice.kernel,
            "env": kernel_env(choice, winner),
            "rule": RULE,
            "benchmark": self._bench.describe(),
            "tuned_at": round(time.time(), 1),
        }
        log.info("tuned on %s for %s: %s wins (%s)", key, goal, winner, rows)
        tuned = from_stored(choice, key, result, goal)
        assert tuned is not None
        return Tuned(tuned, result, kept)


def _candidate_spec(spec: LaunchSpec, choice: KernelChoice, kernel: str) -> LaunchSpec:
    log_path = spec.log_path.with_name(f"{spec.log_path.stem}-tune-{kernel}.log")
    env = {**spec.env, **kernel_env(choice, kernel)}
    return dataclasses.replace(spec, env=env, log_path=log_path)


class KernelTuning:
    """Which kernel a variant launches with on GPUs: pinned, stored, or measured now."""

    def __init__(
        self,
        hardware: Hardware,
        store: VariantStore,
        launch: Callable[[LaunchSpec], Server],
        vllm_python: Path,
        measure: bool = True,
    ) -> None:
        self._hardware = hardware
        self._measure = measure
        self._store = store
        self._launch = launch
        self._vllm_python = vllm_python
        self.version: str | None = None
        self.active: set[tuple[str, str]] = set()  # (model, variant) being measured now

    async def resolve(
        self,
        model_name: str,
        name: str,
        model: Model,
        choice: KernelChoice,
        spec: Callable[[], LaunchSpec],
        side: Callable[[LaunchSpec, int], LaunchSpec | None] | None = None,
    ) -> tuple[KernelChoice, Server | None]:
        """The choice to launch with, and the winner's server when tuning left it running.

        ``spec`` gives the launch spec of the variant's first replica (placement, port);
        ``side(first, i)`` the same on spare GPUs, for alternatives (``KernelTuner.tune``).
        Without ``measure`` (a scheduler runs vLLM, its logs are elsewhere) only pins apply."""
        pin = model.serve.kernel
        if self._hardware.device != "cuda" or not choice.alternatives:
            return choice, None
        if pin not in (None, AUTO):
            return pinned(choice, pin), None
        if not self._measure:
            return choice, None
        first = spec()
        if self.version is None:
            self.version = await vllm_version(self._vllm_python)
        key = tuning_key(self._hardware, first, self.version)
        variant = model.variants[name]
        stored = self._store.tuning(model_name, variant).get(key)
        goal = model.serve.optimize_for
        known = from_stored(choice, key, stored, goal) if stored else None
        if known is not None:
            return known, None
        self.active.add((model_name, name))
        try:
            tuner = KernelTuner(self._launch, model.serve.startup_timeout_s)
            spare = (lambda i: side(first, i)) if side else None
            tuned = await tuner.tune(choice, first, key, spare, goal)
        finally:
            self.active.discard((model_name, name))
        self._store.save_tuning(model_name, variant, key, tuned.result)
        return tuned.choice, tuned.server
