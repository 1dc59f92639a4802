"""Quantization jobs: one per (model, variant, recipe), queued, each in its own process.

``submit`` is idempotent: however many requests ask for a variant, one job builds it. The job
runs ``python -m serving.worker.quantize`` from the quantizer's environment, writes into a
staging folder, and only a clean exit with a model in that folder puts the variant in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving.errors import JobFailed
from serving.manifest import Model, Variant
from serving.store import VariantStore, dir_size

PROGRESS = "QUANTGATE_PROGRESS "
RESULT = "QUANTGATE_RESULT "
WORKER_PACKAGE = Path(__file__).resolve().parent

WorkerCommand = Callable[[Path], Sequence[str]]
# Runs a job somewhere else (a Kubernetes Job): (job, model, staging dir, on_stage) -> result
RemoteRun = Callable[["Job", Model, Path, Callable[[str], None]], Awaitable[dict[str, Any] | None]]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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
    error: str | None = None
    output: Path | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.variant, self.recipe_hash)

    def summary(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        return {
            "id": self.id,
            "model": self.model,
            "variant": self.variant,
            "recipe_hash": self.recipe_hash,
            "state": self.state.value,
            "stage": self.stage,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(end - self.started_at, 2) if self.started_at else None,
            "error": self.error,
            "output": str(self.output) if self.output else None,
            "log": str(self.log_path),
        }

    async def wait(self) -> Job:
        await self.done.wait()
        if self.state is JobState.FAILED:
            raise JobFailed(
                f"quantization of {self.model}:{self.variant} failed: {self.error}",
                log_tail=tail(self.log_path),
            )
        return self


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def worker_pythonpath(path_dir: Path) -> Path:
    """A folder holding only a link to ``serving``: the quantizer environment's PYTHONPATH.

    Nothing else of the gateway's environment (pydantic, ...) leaks into the worker's.
    """
    path_dir.mkdir(parents=True, exist_ok=True)
    link = path_dir / "serving"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(WORKER_PACKAGE, target_is_directory=True)
    return path_dir


def worker_command(
    python: Path, store: VariantStore, extra_path: str | None = None
) -> WorkerCommand:
    """The real worker: the quantizer interpreter with only ``serving`` on its path, plus
    ``extra_path`` (QUANTGATE_QUANTIZER_PYTHONPATH) when its packages live elsewhere."""
    path_dir = worker_pythonpath(store.root / ".runtime" / "pythonpath")
    pythonpath = f"{path_dir}:{extra_path}" if extra_path else str(path_dir)

    def command(spec: Path) -> Sequence[str]:
        return [
            "env",
            f"PYTHONPATH={pythonpath}",
            str(python),
            "-m",
            "serving.worker.quantize",
            str(spec),
        ]

    return command


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
        self._jobs: dict[str, Job] = {}
        self._active: dict[tuple[str, str, str], Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active(self, model: str, name: str, variant: Variant) -> Job | None:
        return self._active.get((model, name, variant.recipe_hash()))

    def last(self, model: str, name: str, variant: Variant) -> Job | None:
        key = (model, name, variant.recipe_hash())
        matching = [j for j in self._jobs.values() if j.key == key]
        return max(matching, key=lambda j: j.created_at) if matching else None

    def submit(self, model_name: str, model: Model, name: str) -> Job:
        """Start building a variant, or return the job already building it."""
        variant = model.variants[name]
        key = (model_name, name, variant.recipe_hash())
        if key in self._active:
            return self._active[key]
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        job_dir = self._store.job_dir(job_id)
        job = Job(job_id, model_name, name, key[2], variant.recipe(), job_dir / "job.log")
        self._jobs[job_id] = job
        self._active[key] = job
        task = asyncio.create_task(self._run(job, model, variant), name=f"job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, model: Model, variant: Variant) -> None:
        staging = self._store.staging_dir(job.model, job.variant, variant, job.id)
        final = self._store.variant_dir(job.model, job.variant, variant)
        try:
            async with self._slots:
                job.state, job.started_at, job.stage = JobState.RUNNING, time.time(), "starting"
                self._save(job)
                result = await self._execute(job, model, staging)
                report = self._report(job, model, final, staging, result)
                self._store.commit(staging, final, report)
                job.output, job.state = final, JobState.SUCCEEDED
        except asyncio.CancelledError:
            job.state, job.error = JobState.FAILED, "cancelled"
            raise
        except Exception as exc:
            job.state, job.error = JobState.FAILED, str(exc)
        finally:
            if job.state is not JobState.SUCCEEDED:
                self._store.discard(staging)
            job.finished_at = time.time()
            self._active.pop(job.key, None)
            self._save(job)
            job.done.set()

    async def _execute(self, job: Job, model: Model, staging: Path) -> dict[str, Any]:
        if not (model.source_path / "config.json").is_file():
            raise RuntimeError(f"source {model.source} is not a model folder (no config.json)")
        if self._remote is not None:
            result = await self._remote(job, model, staging, lambda stage: self._stage(job, stage))
            if result is None or not (staging / "config.json").is_file():
                raise RuntimeError("the quantization Job finished but wrote no model")
            return result
        spec = {"source": str(model.source_path), "output": str(staging), "recipe": job.recipe}
        spec_path = job.log_path.parent / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        with job.log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *self._command(spec_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
            self._procs.add(proc)
            try:
                result = await self._follow(job, proc, log)
                code = await proc.wait()
            finally:
                self._procs.discard(proc)
                if proc.returncode is None:
                    _kill_group(proc)
                    await proc.wait()
        if code != 0:
            last = tail(job.log_path, 1) or "no output"
            raise RuntimeError(f"quantizer exited with code {code}: {last}")
        if result is None or not (staging / "config.json").is_file():
            raise RuntimeError("quantizer exited cleanly but wrote no model")
        return result

    async def _follow(
        self, job: Job, proc: asyncio.subprocess.Process, log: Any
    ) -> dict[str, Any] | None:
        """Copy the worker's stdout into the log, reading progress and the result on the way."""
        assert proc.stdout is not None
        result: dict[str, Any] | None = None
        async for raw in proc.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith(PROGRESS):
                job.stage = json.loads(line[len(PROGRESS) :]).get("stage")
                self._save(job)
            elif line.startswith(RESULT):
                result = json.loads(line[len(RESULT) :])
        return result

    def _report(
        self, job: Job, model: Model, final: Path, staging: Path, result: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "model": job.model,
            "variant": job.variant,
            "source": str(model.source_path),
            "recipe": job.recipe,
            "recipe_hash": job.recipe_hash,
            "job_id": job.id,
            "built_at": time.time(),
            "path": str(final),
            "size_bytes": dir_size(staging),
            "source_size_bytes": dir_size(model.source_path),
            "quantizer": result,
        }

    def _stage(self, job: Job, stage: str) -> None:
        job.stage = stage
        self._save(job)

    def _save(self, job: Job) -> None:
        state = job.log_path.parent / "state.json"
        state.write_text(json.dumps(job.summary(), indent=2), encoding="utf-8")

    async def aclose(self) -> None:
        """Stop every worker process and wait for the jobs to record their end."""
        for proc in list(self._procs):
            _kill_group(proc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
