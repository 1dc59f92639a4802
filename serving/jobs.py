"""Quantization jobs: a queue of builds, one per (model, recipe), each in its own process.

``submit`` is idempotent: however many requests ask for a variant, one job builds it, and a
recipe already built or building is never built again (jobs are keyed by the recipe's hash, so
changing the recipe makes a new build). At most ``max_concurrent`` jobs run at once; the rest
wait queued. A job can be cancelled, queued or running. What the build needs from the disk is
checked at submit, before any work: a recipe that cannot be built fails at once, with no
process started.

With ``remote`` (``serving.kube.runtime.remote_job``) the worker runs elsewhere, a Kubernetes
Job on the shared cache volume; the report, the commit and the states are the same.

Each job keeps ``<cache>/.jobs/<id>/``: ``spec.json``, ``job.log`` and ``state.json``. On start
the runner reads them back: jobs that were queued or running when the gateway stopped are
marked ``interrupted`` (their worker is killed if it outlived the gateway, their staging folder
removed); building the variant again retries it. Built variants are found in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from serving.build import (
    EVAL_CONTEXT,
    EVAL_STRIDE,
    BuildSpec,
    OnProgress,
    WorkerCommand,
    kill_group,
    run_build,
)
from serving.build import tail as tail  # re-exported: the launcher and admin routes use it
from serving.errors import InvalidRecipe, JobFailed
from serving.manifest import Model, Variant
from serving.precheck import check_build
from serving.quality import PerplexityCache
from serving.store import VariantStore, discard

# Runs a job's worker somewhere else (a Kubernetes Job): (job, model, spec, on_progress) -> result
RemoteRun = Callable[["Job", Model, BuildSpec, OnProgress], Awaitable[dict[str, Any] | None]]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the gateway stopped while it was queued or running


UNFINISHED = (JobState.QUEUED, JobState.RUNNING)


@dataclass
class Job:
    id: str
    model: str
    variant: str
    recipe_hash: str
    recipe: dict[str, Any]
    log_path: Path
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stage: str | None = None
    layers_done: int | None = None
    layers_total: int | None = None
    pid: int | None = None
    error: str | None = None
    output: Path | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.recipe_hash)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.finished_at or time.time()) - self.started_at, 2)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "variant": self.variant,
            "recipe_hash": self.recipe_hash,
            "recipe": self.recipe,
            "state": self.state.value,
            "stage": self.stage,
            "progress": {"layers_done": self.layers_done, "layers_total": self.layers_total},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "pid": self.pid,
            "error": self.error,
            "output": str(self.output) if self.output else None,
            "log": str(self.log_path),
        }

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> Job:
        progress = data.get("progress") or {}
        job = cls(
            id=data["id"],
            model=data["model"],
            variant=data["variant"],
            recipe_hash=data["recipe_hash"],
            recipe=data.get("recipe") or {},
            log_path=Path(data["log"]),
            state=JobState(data["state"]),
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            stage=data.get("stage"),
            layers_done=progress.get("layers_done"),
            layers_total=progress.get("layers_total"),
            pid=data.get("pid"),
            error=data.get("error"),
            output=Path(data["output"]) if data.get("output") else None,
        )
        job.done.set()
        return job

    def on_progress(self, event: dict[str, Any]) -> None:
        self.stage = event.get("stage", self.stage)
        if "layers_total" in event:
            self.layers_done, self.layers_total = event["layers_done"], event["layers_total"]

    async def wait(self) -> Job:
        await self.done.wait()
        if self.state is not JobState.SUCCEEDED:
            raise JobFailed(
                f"quantization of {self.model}:{self.variant} {self.state.value}: {self.error}",
                log_tail=tail(self.log_path),
            )
        return self


class JobRunner:
    def __init__(
        self,
        store: VariantStore,
        command: WorkerCommand,
        max_concurrent: int = 1,
        remote: RemoteRun | None = None,
    ) -> None:
        self._store = store
        self._command = command
        self._remote = remote
        self._slots = asyncio.Semaphore(max_concurrent)
        self._perplexity = PerplexityCache(store.perplexity_dir(), EVAL_CONTEXT, EVAL_STRIDE)
        self._active: dict[tuple[str, str], Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._jobs = {job.id: job for job in self._recover()}

    # -- reading ---------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active(self, model: str, variant: Variant) -> Job | None:
        return self._active.get((model, variant.recipe_hash()))

    def last(self, model: str, variant: Variant) -> Job | None:
        key = (model, variant.recipe_hash())
        matching = [j for j in self._jobs.values() if j.key == key]
        return max(matching, key=lambda j: j.created_at) if matching else None

    def base_perplexity(self, source: Path) -> dict[str, Any] | None:
        """The held-out perplexity of a source checkpoint, if a build measured it."""
        return self._perplexity.get(source)

    # -- submitting and cancelling ---------------------------------------------------------
    def submit(self, model_name: str, model: Model, name: str) -> Job:
        """Start building a variant, or return the job already building its recipe."""
        variant = model.variants[name]
        key = (model_name, variant.recipe_hash())
        if key in self._active:
            return self._active[key]
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        log_path = self._store.job_dir(job_id) / "job.log"
        job = Job(job_id, model_name, name, key[1], variant.recipe(), log_path)
        self._jobs[job_id] = job
        try:
            check_build(model.source_path, variant)
        except InvalidRecipe as exc:
            job.stage, job.error = "precheck", str(exc)
            self._finish(job, JobState.FAILED)
            return job
        self._active[key] = job
        self._save(job)
        task = asyncio.create_task(self._run(job, model, variant), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return job

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its worker is killed); None if there is no such job."""
        job = self._jobs.get(job_id)
        task = self._tasks.get(job_id)
        if job is not None and task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return job

    # -- running ---------------------------------------------------------------------------
    async def _run(self, job: Job, model: Model, variant: Variant) -> None:
        state, base = JobState.FAILED, self._perplexity.get(model.source_path)
        spec = BuildSpec(
            source=model.source_path,
            recipe=job.recipe,
            recipe_hash=job.recipe_hash,
            staging=self._store.staging_dir(job.model, variant, job.id),
            final=self._store.variant_dir(job.model, variant),
            log_path=job.log_path,
            base_perplexity=base,
            labels={"model": job.model, "variant": job.variant, "job_id": job.id},
        )
        try:
            async with self._slots:
                job.state, job.started_at, job.stage = JobState.RUNNING, time.time(), "starting"
                self._save(job)
                remote = partial(self._remote, job, model) if self._remote else None
                report = await run_build(
                    spec,
                    self._command,
                    partial(self._on_progress, job),
                    partial(self._on_pid, job),
                    remote,
                )
            if base is None and report["perplexity"]["base"]:
                self._perplexity.put(model.source_path, report["perplexity"]["base"])
            job.output, state = spec.final, JobState.SUCCEEDED
        except asyncio.CancelledError:
            state = JobState.INTERRUPTED if self._closing else JobState.CANCELLED
            job.error = "the gateway stopped" if self._closing else "cancelled"
            raise
        except Exception as exc:
            job.error = str(exc)
        finally:
            self._finish(job, state)

    def _on_progress(self, job: Job, event: dict[str, Any]) -> None:
        job.on_progress(event)
        self._save(job)

    def _on_pid(self, job: Job, pid: int) -> None:
        job.pid = pid
        self._save(job)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state, job.finished_at = state, time.time()
        self._active.pop(job.key, None)
        self._save(job)
        job.done.set()

    def _save(self, job: Job) -> None:
        state = job.log_path.parent / "state.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(job.summary(), indent=2), encoding="utf-8")
        tmp.replace(state)

    # -- restart ---------------------------------------------------------------------------
    def _recover(self) -> list[Job]:
        """Jobs of earlier runs; those left queued or running are marked interrupted."""
        jobs = []
        for job_dir in self._store.job_dirs():
            try:
                job = Job.from_summary(json.loads((job_dir / "state.json").read_text("utf-8")))
            except (OSError, ValueError, KeyError):
                continue
            if job.state in UNFINISHED:
                if job.pid is not None:
                    _kill_orphan(job.pid, job_dir)
                job.error = f"interrupted: the gateway stopped while it was {job.state.value}"
                self._finish(job, JobState.INTERRUPTED)
            jobs.append(job)
        for staging in self._store.staging_dirs():
            discard(staging)
        return jobs

    async def aclose(self) -> None:
        """Stop every worker process and wait for the jobs to record their end."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _kill_orphan(pid: int, job_dir: Path) -> None:
    """Kill a worker that outlived its gateway: only if that pid still runs this job's spec."""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if str(job_dir / "spec.json") in cmdline:
            kill_group(pid)
