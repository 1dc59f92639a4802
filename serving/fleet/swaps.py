"""The fleet's side of swapping (``serving.swapping``): making room before a swap-managed
variant starts, waking a sleeper, and telling listeners (log, metrics) of every step."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from serving.manifest import Manifest
from serving.placement import Placement
from serving.store import weights_size
from serving.swapping import Resident, SwapEvent, Swapper, takes_turns

if TYPE_CHECKING:
    from serving.fleet.controller import VariantController

log = logging.getLogger("serving.fleet")


class SwapDesk:
    """Holds the swapper when the manifest turns swapping on; always takes listeners."""

    def __init__(
        self,
        manifest: Manifest,
        placement: Placement,
        residents: Callable[[], list[Resident]],
        sleep_mode: bool,
    ) -> None:
        self._listeners: list[Callable[[SwapEvent], None]] = []
        self.swapper: Swapper | None = None
        if manifest.swapping is not None and manifest.swapping.enabled:
            self.swapper = Swapper(
                manifest.swapping, placement, residents, sleep_mode=sleep_mode, on_event=self.event
            )

    def takes_turns(self, manifest: Manifest, model: str, variant: str) -> bool:
        return self.swapper is not None and takes_turns(manifest, model, variant)

    def observe(self, listener: Callable[[SwapEvent], None]) -> None:
        self._listeners.append(listener)

    def event(self, event: SwapEvent) -> None:
        level = f" (level {event.level})" if event.level else ""
        log.info("swap: %s:%s %s%s in %.2f s", event.model, event.variant, event.kind, level,
                 event.seconds)  # fmt: skip
        for listener in self._listeners:
            listener(event)

    @contextlib.asynccontextmanager
    async def room(
        self, owner: str, share: float, tp: int, max_wait_s: float
    ) -> AsyncIterator[None]:
        """Hold the swap lock of the GPUs a starting variant may land on and put others to
        sleep until it fits (``owner``: its first replica's claim)."""
        assert self.swapper is not None
        gpus = self.swapper.gpus_for(None)
        async with self.swapper.serialized(gpus):
            await self.swapper.make_room(owner, gpus, share, tp, time.monotonic() + max_wait_s)
            yield

    async def wake(self, resident: Resident, max_wait_s: float) -> None:
        """Wake a sleeper, putting others to sleep to make room."""
        assert self.swapper is not None
        deadline = time.monotonic() + max_wait_s
        async with self.swapper.serialized(resident.gpus):
            if not resident.asleep:
                return  # woken by someone else meanwhile (or stopped: the next call starts it)
            gpus, share = resident.gpus, resident.share
            await self.swapper.make_room(resident.owner, gpus, share, len(gpus), deadline)
            await self.swapper.wake(resident)


def resident_of(c: VariantController) -> Resident | None:
    """A variant's part in swapping: None unless swap-managed and launched."""
    if not c.takes_turns() or not c.pool.replicas:
        return None
    if c.weights_bytes is None:
        c.weights_bytes = weights_size(c.ctx.specs.model_dir(c.model_name, c.name))
    share = c.model.serve.gpu_memory_utilization
    return Resident(c.model_name, c.name, c.pool.replicas[0], share, c.weights_bytes, c.waiting)
