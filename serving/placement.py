"""Which GPUs a replica runs on: tensor-parallel groups, and small variants packed by memory.

Each replica asks for ``tensor_parallel_size`` GPUs and a fraction of each GPU's memory
(``gpu_memory_utilization``). Best fit: among GPUs with room, take those with the least room
left, so small variants share a GPU and large ones still find empty GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.errors import PlacementError
from serving.hardware import Hardware

CAPACITY = 0.95  # of each GPU's memory that replicas may claim together


@dataclass
class Placement:
    hardware: Hardware
    _claims: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)

    def used(self, gpu: int) -> float:
        return sum(share for gpus, share in self._claims.values() if gpu in gpus)

    def place(self, owner: str, tensor_parallel: int, memory_fraction: float) -> tuple[int, ...]:
        """Claim GPUs for ``owner`` (a replica id); raise PlacementError if it cannot fit."""
        if owner in self._claims:
            return self._claims[owner][0]
        gpus = self.hardware.gpus
        if self.hardware.device == "cpu":
            if tensor_parallel > 1:
                raise PlacementError(
                    f"{owner}: tensor_parallel_size {tensor_parallel} needs GPUs; "
                    "this machine has none"
                )
            return ()
        if tensor_parallel > len(gpus):
            raise PlacementError(
                f"{owner}: tensor_parallel_size {tensor_parallel} needs {tensor_parallel} GPUs; "
                f"this machine has {len(gpus)}"
            )
        room = {g.index: self.room(g.index) for g in gpus}
        fitting = sorted((free, i) for i, free in room.items() if free >= memory_fraction - 1e-9)
        if len(fitting) < tensor_parallel:
            free = ", ".join(f"GPU {i}: {room[i]:.2f}" for i in sorted(room))
            raise PlacementError(
                f"{owner}: needs {tensor_parallel} GPU(s) with {memory_fraction:.2f} of memory "
                f"free each; free now: {free}"
            )
        chosen = tuple(sorted(i for _, i in fitting[:tensor_parallel]))
        self._claims[owner] = (chosen, memory_fraction)
        return chosen

    def room(self, gpu: int, owner: str = "") -> float:
        """Share of ``gpu``'s memory still free, counting ``owner``'s own claim as free."""
        own = self._claims.get(owner)
        mine = own[1] if own is not None and gpu in own[0] else 0.0
        return CAPACITY - self.used(gpu) + mine

    def claim(self, owner: str, gpus: tuple[int, ...], memory_fraction: float) -> None:
        """Claim exactly ``gpus`` (a sleeping replica waking where its process lives); raise
        PlacementError if one of them has no room."""
        short = [g for g in gpus if self.room(g, owner) < memory_fraction - 1e-9]
        if short:
            free = ", ".join(f"GPU {g}: {self.room(g, owner):.2f}" for g in short)
            raise PlacementError(
                f"{owner}: needs {memory_fraction:.2f} of memory on GPU(s) "
                f"{', '.join(map(str, gpus))}; free now: {free}"
            )
        self._claims[owner] = (tuple(gpus), memory_fraction)

    def release(self, owner: str) -> None:
        self._claims.pop(owner, None)

    def claims(self) -> dict[str, tuple[int, ...]]:
        return {owner: gpus for owner, (gpus, _) in self._claims.items()}
