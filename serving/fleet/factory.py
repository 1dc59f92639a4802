"""One way to wire a fleet, whoever runs it: ``quantgate serve`` (local processes or Kubernetes),
``quantgate bench``, and the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving import tuner
from serving.build import WorkerCommand
from serving.fleet.context import FleetContext
from serving.fleet.fleet import Fleet
from serving.fleet.packages import VllmPackages
from serving.fleet.swaps import SwapDesk
from serving.hardware import Hardware
from serving.jobs import JobRunner, RemoteRun
from serving.launcher import LaunchSpec, Server, VllmServer
from serving.manifest import Manifest
from serving.placement import Placement
from serving.specs import LaunchPlanner
from serving.store import VariantStore


@dataclass(frozen=True)
class Scheduled:
    """Where a scheduler (Kubernetes) runs vLLM and the jobs: the fleet neither places GPUs
    nor measures kernels there."""

    launch: Callable[[LaunchSpec], Server]
    remote: RemoteRun
    runs_jobs: bool = True  # False: ``remote`` refuses every job (Kubernetes static mode)


def open_fleet(
    manifest: Manifest,
    worker: WorkerCommand,
    vllm_python: Path,
    hardware: Hardware,
    *,
    host: str = "127.0.0.1",
    max_concurrent_jobs: int = 1,
    scheduled: Scheduled | None = None,
    launch: Callable[[LaunchSpec], Server] | None = None,
) -> Fleet:
    """The fleet serving ``manifest``: its variant store and job runner under the manifest's
    cache, vLLM as child processes of ``vllm_python`` (or ``launch``), or ``scheduled``."""
    store = VariantStore(manifest.cache_dir)
    remote = scheduled.remote if scheduled else None
    jobs = JobRunner(store, worker, max_concurrent_jobs, remote)
    here = scheduled is None
    if scheduled is not None:
        launch = scheduled.launch
    launch = launch or (lambda spec: VllmServer(spec, vllm_python))
    placement = Placement(hardware)
    sleep_mode = here and hardware.device == "cuda"
    ctx = FleetContext(
        manifest=manifest, store=store, jobs=jobs, hardware=hardware, placement=placement,
        specs=LaunchPlanner(manifest, store, hardware, placement, host, here),
        # kernels are measured only where this fleet runs vLLM itself (logs, GPUs)
        tuning=tuner.KernelTuning(hardware, store, launch, vllm_python, here),
        swaps=SwapDesk(manifest, placement, lambda: fleet.residents(), sleep_mode),
        packages=VllmPackages(vllm_python), launch=launch, places_gpus=here,
        runs_jobs=scheduled is None or scheduled.runs_jobs,
    )  # fmt: skip
    fleet = Fleet(ctx)
    return fleet
