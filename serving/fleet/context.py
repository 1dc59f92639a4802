"""What every variant controller of a fleet shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving import tuner
from serving.fleet.packages import VllmPackages
from serving.fleet.swaps import SwapDesk
from serving.hardware import Hardware
from serving.jobs import JobRunner
from serving.launcher import LaunchSpec, Server
from serving.manifest import Manifest
from serving.placement import Placement
from serving.specs import LaunchPlanner
from serving.store import VariantStore


@dataclass
class FleetContext:
    """What every controller of a fleet shares; ``manifest`` follows reloads."""

    manifest: Manifest
    store: VariantStore
    jobs: JobRunner
    hardware: Hardware
    placement: Placement
    specs: LaunchPlanner
    tuning: tuner.KernelTuning
    swaps: SwapDesk
    packages: VllmPackages
    launch: Callable[[LaunchSpec], Server]
    places_gpus: bool  # False where a scheduler (Kubernetes) places pods
    runs_jobs: bool = True  # False: builds, imports, measures are refused (the chart's backends)
