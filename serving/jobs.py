"""Quantization jobs: a queue of builds, one per (model, recipe), each in its own process
(``serving.job`` is one job's record).

``submit`` is idempotent: however many requests ask for a variant, one job builds it, and a
recipe already built or building is never built again (jobs are keyed by the recipe's hash, so
changing the recipe makes a new build). At most ``max_concurrent`` jobs run at once; the rest
wait queued. A job can be cancelled, queued or running (cancelling a finished one raises
JobFinished). What the build needs from the disk is checked at submit, before any work: a
recipe that cannot be built fails at once, with no process started.

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
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from serving.build import (
    EVAL_CONTEXT,
    EVAL_STRIDE,
    EVAL_TEXTS,
    BuildSpec,
    OnProgress,
    WorkerCommand,
    run_build,
    source_spec,
)
from serving.errors import InvalidRecipe, JobFinished
from serving.evaluation import measure_key
from serving.job import MISSING, SOURCE, SOURCE_KEY, UNFINISHED, Job, JobState
from serving.manifest import Model, Variant, recipe_hash
from serving.precheck import check_build, check_source
from serving.processes import kill_group
from serving.quality import PerplexityCache
from serving.store import REPORT, VariantStore, discard

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0  # layer progress in the log: at most this often per job

# Runs a job's worker somewhere else (a Kubernetes Job): (job, model, spec, on_progress) -> result
RemoteRun = Callable[["Job", Model, BuildSpec, OnProgress], Awaitable[dict[str, Any] | None]]


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
        self._perplexity = PerplexityCache(
            store.perplexity_dir(), f"{EVAL_CONTEXT}|{EVAL_STRIDE}|{EVAL_TEXTS}"
        )
        self._active: dict[tuple[str, str], Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._told: dict[str, float] = {}  # job id -> when its progress was last logged
        self._jobs = {job.id: job for job in self._recover()}

    # -- reading ---------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active(self, model: str, variant: Variant) -> Job | None:
        return self._active.get((model, variant.recipe_hash()))

    def last(self, model: str, variant: Variant) -> Job | None:
        return self._latest((model, variant.recipe_hash()))

    def _latest(self, key: tuple[str, str]) -> Job | None:
        matching = [j for j in self._jobs.values() if j.key == key]
        return max(matching, key=lambda j: j.created_at) if matching else None

    def source_job(self, model: Model) -> Job | None:
        """The latest job preparing the model's source (running or ended), if any."""
        if model.origin.prepared_here:
            return None
        try:
            return self._latest((SOURCE_KEY, recipe_hash(self._source_recipe(model))))
        except OSError:  # no GGUF file there: the precheck's failed job
            return self._latest((SOURCE_KEY, MISSING))

    @staticmethod
    def _source_recipe(model: Model) -> dict[str, Any]:
        """What the job preparing the model's source is told (OSError: no GGUF file there)."""
        return model.origin.recipe(model.source_token_env)

    def base_perplexity(self, model: Model) -> dict[str, Any] | None:
        """The held-out perplexity of the model's base, if a build measured it."""
        return self._perplexity.get(model.source_path, _texts(model))

    def source_ready(self, model: Model) -> bool:
        """Whether the model's checkpoint folder is there: a local folder, or a GGUF file or
        Hub repository prepared already (its folder holds ``report.json``)."""
        if model.source is None or model.origin.prepared_here:  # upstreams only, or a folder
            return True
        try:
            return (model.source_path / REPORT).is_file()
        except OSError:  # a GGUF file that cannot be read: its job says so
            return False

    # -- submitting and cancelling ---------------------------------------------------------
    def submit(
        self, model_name: str, model: Model, name: str, served: dict[str, str] | None = None
    ) -> Job:
        """Start building a variant, or return the job already building its recipe. A source
        not prepared yet is prepared first (``prepare_source``), by a job of its own.
        ``served`` (url, model): measure the variant through that running vLLM server instead
        (FP8, quantized by vLLM at load)."""
        variant = model.variants[name]
        key = (model_name, variant.recipe_hash())
        if key in self._active:
            return self._active[key]
        job = self._new_job(model_name, name, key[1], variant.recipe())
        try:
            if self.source_ready(model):
                check_build(model.source_path, variant)
        except InvalidRecipe as exc:
            self._refuse(job, exc)
            return job
        self._start(job, self._build(job, model, variant, served))
        return job

    def prepare_source(self, model_name: str, model: Model) -> Job | None:
        """The job importing the model's GGUF file or downloading its Hub repository, started
        if none runs; None when the source is ready."""
        if self.source_ready(model):
            return None
        try:
            check_source(model.origin)
            recipe = self._source_recipe(model)
        except (InvalidRecipe, OSError) as exc:  # no GGUF file there, or not a GGUF file
            job = self._new_job(model_name, SOURCE, MISSING, {"source": model.source})
            self._refuse(job, exc)
            return job
        key = (SOURCE_KEY, recipe_hash(recipe))
        if key in self._active:
            return self._active[key]
        job = self._new_job(model_name, SOURCE, key[1], recipe)
        self._start(job, self._prepare(job, model))
        return job

    def _new_job(self, model: str, variant: str, hash_: str, recipe: dict[str, Any]) -> Job:
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        job = Job(job_id, model, variant, hash_, recipe, self._store.job_dir(job_id) / "job.log")
        self._jobs[job_id] = job
        return job

    def _refuse(self, job: Job, why: Exception) -> None:
        """A job that failed its check before it ran (``stage: precheck``)."""
        job.stage, job.error = "precheck", str(why)
        self._finish(job, JobState.FAILED)
        log.warning("job %s failed its check before it ran: %s: %s", job.id, job.title, job.error)

    def _start(self, job: Job, work: Coroutine[Any, Any, None]) -> None:
        self._active[job.key] = job
        self._save(job)
        task = asyncio.create_task(self._lifecycle(job, work), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its worker is killed); None if there is no such job.
        Raise JobFinished for a job that already ended, saying how."""
        job = self._jobs.get(job_id)
        if job is not None and job.state not in UNFINISHED:
            failed = job.state in (JobState.FAILED, JobState.INTERRUPTED) and job.error
            how = f"{job.state.value}: {job.error}" if failed else job.state.value
            raise JobFinished(f"job {job.id} ({job.title}) already finished ({how}); "
                              "there is nothing to cancel")  # fmt: skip
        task = self._tasks.get(job_id)
        if job is not None and task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return job

    # -- running ---------------------------------------------------------------------------
    async def _lifecycle(self, job: Job, work: Coroutine[Any, Any, None]) -> None:
        """Run the job's work and record how it ended."""
        state = JobState.FAILED
        log.info("job %s queued: %s (%s)", job.id, job.title, job.recipe.get("method"))
        try:
            await work
            state = JobState.SUCCEEDED
        except asyncio.CancelledError:
            state = JobState.INTERRUPTED if self._closing else JobState.CANCELLED
            job.error = "the gateway stopped" if self._closing else "cancelled"
            raise
        except Exception as exc:
            job.error = str(exc)
        finally:
            self._finish(job, state)
            level = logging.INFO if state is JobState.SUCCEEDED else logging.WARNING
            log.log(level, "job %s %s: %s after %s s%s", job.id, state.value, job.title,
                    job.duration_s, f": {job.error}" if job.error else "")  # fmt: skip

    async def _build(
        self, job: Job, model: Model, variant: Variant, served: dict[str, str] | None
    ) -> None:
        source = self.prepare_source(job.model, model)
        if source is not None:
            job.stage = "source"
            self._save(job)
            await source.wait()
            try:
                check_build(model.source_path, variant)
            except InvalidRecipe:
                job.stage = "precheck"
                raise
        texts = _texts(model)
        base = self._perplexity.get(model.source_path, texts)
        spec = BuildSpec(
            source=model.source_path,
            recipe=job.recipe,
            recipe_hash=job.recipe_hash,
            staging=self._store.staging_dir(job.model, variant, job.id),
            final=self._store.variant_dir(job.model, variant),
            log_path=job.log_path,
            work_dir=job.log_path.parent,
            base_perplexity=base,
            labels={"model": job.model, "variant": job.variant, "job_id": job.id},
            evaluation=job.recipe.get("evaluation"),
            served=served,
        )
        report = await self._execute(job, spec, model)
        if base is None and report["perplexity"]["base"]:
            self._perplexity.put(model.source_path, report["perplexity"]["base"], texts)
        self._store.link_name(job.model, job.variant, variant)
        job.output = spec.final

    async def _prepare(self, job: Job, model: Model) -> None:
        evaluation = model.evaluation.spec() if model.evaluation else None
        spec = source_spec(
            model.origin, self._store.root, job.log_path, job.log_path.parent, job.id,
            model.source_token_env, job.model, evaluation,
        )  # fmt: skip
        report = await self._execute(job, spec, model)  # on Kubernetes: a Job, like builds
        if report["perplexity"]["base"]:
            self._perplexity.put(spec.final, report["perplexity"]["base"], _texts(model))
        job.output = spec.final

    async def _execute(self, job: Job, spec: BuildSpec, model: Model) -> dict[str, Any]:
        """Run the worker for ``spec`` once a job slot is free; return the report."""
        async with self._slots:
            job.state, job.started_at, job.stage = JobState.RUNNING, time.time(), "starting"
            self._save(job)
            log.info("job %s running: %s", job.id, job.title)
            elsewhere = partial(self._remote, job, model) if self._remote else None
            return await run_build(
                spec,
                self._command,
                partial(self._on_progress, job),
                partial(self._on_pid, job),
                elsewhere,
            )

    def _on_progress(self, job: Job, event: dict[str, Any]) -> None:
        stage, done = job.stage, job.layers_done
        job.on_progress(event)
        now = time.monotonic()
        moved = job.layers_done != done and now - self._told.get(job.id, 0.0) >= PROGRESS_EVERY_S
        if job.stage != stage or moved:  # every stage, layers at most every PROGRESS_EVERY_S
            self._told[job.id] = now
            layers = f" ({job.layers_done}/{job.layers_total} layers)" if job.layers_total else ""
            log.info("job %s: %s: %s%s", job.id, job.title, job.stage, layers)
        self._save(job)

    def _on_pid(self, job: Job, pid: int) -> None:
        job.pid = pid
        self._save(job)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state, job.finished_at = state, time.time()
        self._active.pop(job.key, None)
        self._told.pop(job.id, None)
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


def _texts(model: Model) -> str:
    """The key of the model's own evaluation texts in the base perplexity cache."""
    return measure_key(model.evaluation.spec() if model.evaluation else None)
