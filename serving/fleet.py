"""The fleet: from a model name to a ready vLLM backend, building and starting on demand.

For each (model, variant) one bring-up at a time: build the variant if it is missing (one job,
however many requests wait), then start vLLM on it. A request waits for that within the
manifest's bound (``on_missing``) or is told to come back (``VariantUnavailable`` with
Retry-After). A failed build or start stays failed, with its cause, until an admin retries.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving.errors import (
    BackendFailed,
    QuantgateError,
    UnknownModel,
    VariantOverBudget,
    VariantUnavailable,
    VariantUnsupported,
)
from serving.hardware import Hardware
from serving.jobs import Job, JobRunner
from serving.launcher import LaunchSpec, VllmServer, free_port
from serving.manifest import Manifest, Model, split_model_name
from serving.quality import over_budget
from serving.store import VariantStore


class VariantState(StrEnum):
    MISSING = "missing"  # quantized variant not built yet
    BUILDING = "building"
    BUILT = "built"  # on disk, no server running
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"  # this machine has no kernel for it
    OVER_BUDGET = "over_budget"  # built, but its perplexity increase is over max_ppl_increase


@dataclass(frozen=True)
class Backend:
    model: str
    variant: str
    url: str
    served_name: str


class _Slot:
    """Runtime state of one variant."""

    def __init__(self) -> None:
        self.server: VllmServer | None = None
        self.bring_up: asyncio.Task[Backend] | None = None
        self.failure: QuantgateError | None = None
        self.backend: Backend | None = None


class Fleet:
    def __init__(
        self,
        manifest: Manifest,
        store: VariantStore,
        jobs: JobRunner,
        vllm_python: Path,
        hardware: Hardware,
        host: str = "127.0.0.1",
    ) -> None:
        self.manifest = manifest
        self.hardware = hardware
        self._store = store
        self.jobs = jobs
        self._python = vllm_python
        self._host = host
        self._slots = {
            (m, v): _Slot() for m, model in manifest.models.items() for v in model.variants
        }

    # -- names -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        out: list[str] = []
        for m, model in self.manifest.models.items():
            out += [m, *(f"{m}:{v}" for v in model.variants)]
        return out

    def resolve(self, name: str) -> tuple[str, str]:
        """``tiny`` -> (tiny, its default variant); ``tiny:v`` -> (tiny, v); else UnknownModel."""
        model_name, variant = split_model_name(name)
        model = self.manifest.models.get(model_name)
        if model is None or (variant is not None and variant not in model.variants):
            raise UnknownModel(name, self.names())
        return model_name, variant or model.default_variant

    # -- state -----------------------------------------------------------------------------
    def state(self, model_name: str, name: str) -> VariantState:
        slot = self._slots[(model_name, name)]
        model = self.manifest.models[model_name]
        if self.hardware.unsupported(model.variants[name]):
            return VariantState.UNSUPPORTED
        if self._over_budget(model_name, name):
            return VariantState.OVER_BUDGET
        if slot.failure is not None:
            return VariantState.FAILED
        if slot.server is not None and slot.server.alive():
            return VariantState.READY if slot.backend else VariantState.STARTING
        if self.jobs.active(model_name, model.variants[name]):
            return VariantState.BUILDING
        return VariantState.BUILT if self._built(model_name, model, name) else VariantState.MISSING

    def describe(self, model_name: str, name: str) -> dict[str, Any]:
        model = self.manifest.models[model_name]
        variant = model.variants[name]
        slot = self._slots[(model_name, name)]
        last = self.jobs.last(model_name, variant)
        server = slot.server
        return {
            "model": model_name,
            "variant": name,
            "default": name == model.default_variant,
            "state": self.state(model_name, name).value,
            "method": variant.method.value,
            "recipe_hash": variant.recipe_hash() if variant.quantized else None,
            "scheme": variant.scheme,
            "max_ppl_increase": variant.max_ppl_increase,
            "error": self.hardware.unsupported(variant)
            or self._over_budget(model_name, name)
            or (str(slot.failure) if slot.failure else None),
            "job": last.summary() if last else None,
            "backend": {
                "url": server.url,
                "pid": server.pid,
                "started_at": server.started_at,
                "ready_at": server.ready_at,
            }
            if server and server.alive()
            else None,
            "report": self._store.report(model_name, variant) if variant.needs_build else None,
        }

    def _built(self, model_name: str, model: Model, name: str) -> bool:
        variant = model.variants[name]
        return not variant.needs_build or self._store.is_built(model_name, variant)

    def _over_budget(self, model_name: str, name: str) -> str | None:
        variant = self.manifest.models[model_name].variants[name]
        if variant.max_ppl_increase is None:
            return None
        reason = over_budget(variant, self._store.report(model_name, variant))
        return f"{model_name}:{name} is not served: {reason}" if reason else None

    # -- acquiring a backend ---------------------------------------------------------------
    async def backend(self, model_name: str, name: str) -> Backend:
        """A ready backend for the variant, bringing it up if needed (see module docstring)."""
        slot = self._slots[(model_name, name)]
        if slot.backend is not None and slot.server is not None and slot.server.alive():
            return slot.backend
        reason = self.hardware.unsupported(self.manifest.models[model_name].variants[name])
        if reason:
            raise VariantUnsupported(f"{model_name}:{name} cannot be served here: {reason}")
        refusal = self._over_budget(model_name, name)
        if refusal:
            raise VariantOverBudget(refusal)
        if slot.failure is not None:
            raise slot.failure
        task = self._ensure_bring_up(model_name, name)
        policy = self.manifest.models[model_name].on_missing
        if policy.action == "reject":
            raise VariantUnavailable(
                f"{model_name}:{name} is {self.state(model_name, name).value}; try again later",
                retry_after_s=policy.retry_after_s,
            )
        try:
            return await asyncio.wait_for(asyncio.shield(task), policy.max_wait_s)
        except TimeoutError:
            raise VariantUnavailable(
                f"{model_name}:{name} is still {self.state(model_name, name).value} after "
                f"{policy.max_wait_s:.0f} s; try again later",
                retry_after_s=policy.retry_after_s,
            ) from None

    def build(self, model_name: str, name: str) -> Job | None:
        """Admin: (re)build a variant; clears an earlier failure. None when nothing to build."""
        model = self.manifest.models[model_name]
        slot = self._slots[(model_name, name)]
        slot.failure = None
        if self._built(model_name, model, name):
            return None
        job = self.jobs.submit(model_name, model, name)  # the bring-up joins this same job
        self._ensure_bring_up(model_name, name)
        return job

    def _ensure_bring_up(self, model_name: str, name: str) -> asyncio.Task[Backend]:
        slot = self._slots[(model_name, name)]
        if slot.bring_up is None or slot.bring_up.done():
            slot.bring_up = asyncio.create_task(self._bring_up(model_name, name))
            slot.bring_up.add_done_callback(_consume_exception)
        return slot.bring_up

    async def _bring_up(self, model_name: str, name: str) -> Backend:
        slot = self._slots[(model_name, name)]
        model = self.manifest.models[model_name]
        try:
            if not self._built(model_name, model, name):
                job = self.jobs.submit(model_name, model, name)
                await job.wait()
            unsupported = self.hardware.unsupported(model.variants[name])
            if unsupported:  # built (say, for a quality study) but not servable here
                raise VariantUnsupported(
                    f"{model_name}:{name} cannot be served here: {unsupported}"
                )
            refusal = self._over_budget(model_name, name)
            if refusal:
                raise VariantOverBudget(refusal)
            return await self._start(model_name, model, name)
        except QuantgateError as exc:
            slot.failure = exc
            raise

    async def _start(self, model_name: str, model: Model, name: str) -> Backend:
        slot = self._slots[(model_name, name)]
        slot.backend = None
        if slot.server is not None:
            await slot.server.stop()
        variant = model.variants[name]
        model_dir = (
            self._store.variant_dir(model_name, variant) if variant.needs_build else model.source
        )
        served = f"{model_name}:{name}"
        names = (served, model_name) if name == model.default_variant else (served,)
        spec = LaunchSpec(
            model_dir=model_dir,
            served_names=names,
            port=free_port(self._host),
            host=self._host,
            log_path=self._store.log_dir() / f"{model_name}-{name}-{int(time.time())}.log",
            max_model_len=model.serve.max_model_len,
            dtype=model.serve.dtype,
            quantization=variant.serve_quantization or checkpoint_quantization(model_dir),
            enforce_eager=model.serve.enforce_eager,
            extra_args=model.serve.extra_args,
            env={"VLLM_CPU_KVCACHE_SPACE": str(model.serve.cpu_kv_cache_gib)},
        )
        slot.server = VllmServer(spec, self._python)
        await slot.server.start(model.serve.startup_timeout_s)
        slot.backend = Backend(model_name, name, slot.server.url, served)
        return slot.backend

    async def stop(self, model_name: str, name: str) -> None:
        """Stop the variant's vLLM server, if one runs (it starts again on the next request)."""
        slot = self._slots[(model_name, name)]
        slot.backend = None
        if slot.server is not None:
            await slot.server.stop()

    async def aclose(self) -> None:
        for slot in self._slots.values():
            if slot.bring_up is not None:
                slot.bring_up.cancel()
        await self.jobs.aclose()
        await asyncio.gather(
            *(s.server.stop() for s in self._slots.values() if s.server is not None)
        )


def checkpoint_quantization(model_dir: Path) -> str | None:
    """The ``--quantization`` vLLM should use: the checkpoint's own ``quant_method``."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendFailed(f"cannot read {model_dir}/config.json: {exc}") from exc
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else None


def _consume_exception(task: asyncio.Task[Backend]) -> None:
    if not task.cancelled():
        task.exception()
