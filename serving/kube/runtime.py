"""The fleet on Kubernetes: the launcher's Deployments and Jobs behind the fleet's interfaces.

``launch`` turns a LaunchSpec into a ``KubeServer`` (a Deployment + Service that the replica
supervisor drives like a local process); ``remote_job`` runs a quantization job as a Job, and
the import or download of a model's GGUF or Hub source too, into the shared cache volume, and
copies its pod's log into the job's log as a local worker's output would be, progress and all.
Kubernetes restarts crashed pods and schedules GPUs itself, so the fleet neither restarts nor
places them (``open_fleet(scheduled=...)``). A variant is one Deployment: replica 0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

from serving.build import BuildSpec, OnProgress
from serving.errors import BackendFailed
from serving.job import Job
from serving.kube.launcher import KubernetesLauncher, VllmDeployment
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload, VariantWorkload, quantization_spec
from serving.launcher import LaunchSpec, Server
from serving.manifest import Manifest, Model
from serving.worker import protocol

NO_SLEEP_ON_KUBERNETES = (
    "sleep mode is driven only for local vLLM processes: on Kubernetes each variant's pod has "
    "GPUs of its own, and idle variants scale to zero instead"
)


class KubeServer:
    """A variant's Deployment with the face of a local vLLM process."""

    def __init__(self, deployment: VllmDeployment, spec: LaunchSpec) -> None:
        self.spec = spec
        self._deployment = deployment
        self._stopped = asyncio.Event()

    @property
    def url(self) -> str:
        return self._deployment.url

    @property
    def pid(self) -> int | None:
        return None

    @property
    def started_at(self) -> float | None:
        return self._deployment.started_at

    @property
    def ready_at(self) -> float | None:
        return self._deployment.ready_at

    def alive(self) -> bool:
        return self._deployment.alive()

    async def start(self, timeout_s: float) -> None:
        self._stopped.clear()
        await self._deployment.start(timeout_s)

    async def wait(self) -> int:
        """Returns only once stopped: Kubernetes restarts a crashed vLLM pod by itself."""
        await self._stopped.wait()
        return 0

    async def stop(self, grace_s: float = 15.0) -> None:
        await self._deployment.stop(grace_s)
        self._stopped.set()

    async def sleep(self, level: int) -> None:
        raise BackendFailed(NO_SLEEP_ON_KUBERNETES)

    async def wake_up(self, level: int) -> None:
        raise BackendFailed(NO_SLEEP_ON_KUBERNETES)


def launch(
    launcher: KubernetesLauncher, volume: CacheVolume, manifest: Callable[[], Manifest]
) -> Callable[[LaunchSpec], Server]:
    """``manifest``: the manifest the fleet serves now (``Fleet.manifest``), so that a model a
    reload added, or whose settings it changed, starts from the manifest as it is now."""

    def make(spec: LaunchSpec) -> Server:
        if spec.replica > 0:
            raise BackendFailed(
                f"{spec.model}:{spec.variant}: on Kubernetes a variant is one Deployment; "
                "set serve.replicas to 1 (scale the Deployment's pods with Kubernetes)"
            )
        model = manifest().models[spec.model]
        workload = VariantWorkload.of(
            spec.model, model, spec.variant, spec.model_dir, volume, spec.quantization, spec.env
        )
        return KubeServer(launcher.server(workload), spec)

    return make


def remote_job(launcher: KubernetesLauncher, volume: CacheVolume) -> Any:
    """A JobRunner ``remote``: the worker runs in a Job on the shared cache volume."""

    async def run(
        job: Job, model: Model, build: BuildSpec, on_progress: OnProgress
    ) -> dict[str, Any] | None:
        worker = build.worker_spec()
        spec = quantization_spec(
            volume, build.source, build.staging, build.recipe, worker["evaluate"]
        )
        spec_file = job.log_path.parent / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        # a variant's build, or the import or download of the model's source (SOURCE)
        recipe = build.recipe if job.variant not in model.variants else None
        workload = QuantizationWorkload.of(
            job.id, job.model, model, job.variant, spec_file, volume, recipe
        )
        with build.log_path.open("a", encoding="utf-8") as log:
            return await launcher.run_quantization_job(workload, partial(_take, log, on_progress))

    return run


def _take(log: TextIO, on_progress: OnProgress, line: str) -> None:
    """A line of the Job pod's log: into the job's log; its progress, if it is some, to the job."""
    log.write(line + "\n")
    log.flush()
    try:
        message = protocol.parse(line)
    except ValueError:  # a progress line cut short: text like any other
        return
    if message is not None and message[0] == "progress":
        on_progress(message[1])
