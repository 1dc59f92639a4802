"""The fleet: from a model name to a ready vLLM replica, building and starting on demand.

``fleet`` resolves names and hands out leases; each variant's ``controller`` owns its lifecycle
(build, kernel, room on the GPUs, replicas) and wakes the requests waiting on it; ``swaps`` is
the fleet's side of variants taking turns on GPUs; ``status`` the typed state the admin API
shows; ``factory.open_fleet`` wires one.
"""

from serving.fleet.factory import Scheduled, open_fleet
from serving.fleet.fleet import Fleet
from serving.fleet.routing import RequestHints
from serving.fleet.status import KernelStatus, Lease, VariantState, VariantStatus

__all__ = [
    "Fleet", "KernelStatus", "Lease", "RequestHints", "Scheduled", "VariantState",
    "VariantStatus", "open_fleet",
]  # fmt: skip
