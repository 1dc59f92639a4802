"""One quantization or source job as the runner (``serving.jobs``) records it: its state,
progress and outcome, kept in ``<cache>/.jobs/<id>/state.json``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving.errors import InvalidRecipe, JobFailed
from serving.processes import tail


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the gateway stopped while it was queued or running


UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
SOURCE = "(source)"  # the variant label of a job that imports or downloads a model's source
SOURCE_KEY = ""  # source jobs are keyed by the source alone, not by the model naming it
MISSING = "missing"  # the recipe hash of a source job refused before it started


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
        """What one job builds: a model's recipe, or a source (shared by the models naming it)."""
        return (SOURCE_KEY if self.variant == SOURCE else self.model, self.recipe_hash)

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

    @property
    def title(self) -> str:
        """What it makes, in log lines: ``model:variant``, or the source of a model."""
        if self.variant == SOURCE:
            return f"the source of {self.model}"
        return f"{self.model}:{self.variant}"

    def on_progress(self, event: dict[str, Any]) -> None:
        self.stage = event.get("stage", self.stage)
        if "layers_total" in event:
            self.layers_done, self.layers_total = event["layers_done"], event["layers_total"]

    async def wait(self) -> Job:
        await self.done.wait()
        if self.state is not JobState.SUCCEEDED:
            what = (
                f"preparing the source of {self.model}"
                if self.variant == SOURCE
                else f"quantization of {self.model}:{self.variant}"
            )
            if self.stage == "precheck":  # the recipe cannot be built from this source
                raise InvalidRecipe(f"{what} cannot run: {self.error}")
            raise JobFailed(
                f"{what} {self.state.value}: {self.error}", log_tail=tail(self.log_path)
            )
        return self
