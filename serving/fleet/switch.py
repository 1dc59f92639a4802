"""How a variant changes kernel for ``optimize_for: auto`` (``serving.fleet.follow`` decides when).

Beside: for each replica, one with the new kernel starts on GPU memory claimed for it first;
once it is ready the old one takes no new requests, finishes those it has (``drain_s``) and
stops. No request waits.

By sleep, where there is no room beside and the variant runs one replica in vLLM's sleep mode
(``LaunchPlanner.sleep_mode``). The switch runs as the variant's bring-up, so a request that
arrives meanwhile waits for it (within ``on_missing.max_wait_s``) rather than failing or
starting another. The old replica finishes its requests and sleeps (level 1: its weights to host
RAM, its GPU memory given back); the new kernel's replica starts on that memory, a cold start
the first time. The old one is kept asleep as the standby, so switching back is a sleep and a
wake instead of a start. If the new replica does not come up, the old one is woken and serves
as before.
"""

from __future__ import annotations

import contextlib
import logging

from serving.errors import PlacementError, QuantgateError, VariantUnavailable
from serving.fleet.context import FleetContext
from serving.fleet.controller import VariantController
from serving.kernels import KernelChoice
from serving.replica import Replica, ReplicaState

log = logging.getLogger("serving.fleet")


def _gpus(replica: Replica) -> tuple[int, ...]:
    return replica.server.spec.gpus if replica.server is not None else ()


class KernelSwitcher:
    def __init__(self, ctx: FleetContext) -> None:
        self._ctx = ctx

    def can_sleep(self, c: VariantController, replica: Replica) -> bool:
        """Whether ``replica``, the variant's only one, runs in vLLM's sleep mode."""
        server = replica.server
        return len(c.pool.replicas) == 1 and server is not None and server.spec.sleep_mode

    async def beside(self, c: VariantController, old: Replica) -> None:
        """A replica with the chosen kernel beside ``old``, then ``old`` drained and stopped.
        PlacementError, with nothing changed, when there is no room for it."""
        [index] = c.pool.free_indices(1)
        owner = f"{c.label}#{index}"
        model, placement = c.model, self._ctx.placement
        try:
            placement.place(owner, model.tensor_parallel_size, model.serve.gpu_memory_utilization)
        except PlacementError as exc:
            raise PlacementError(f"no room for a replica beside the running one: {exc}") from exc
        try:
            await c.pool.add()
        except BaseException:
            placement.release(owner)
            raise
        await c.pool.remove(old, model.serve.drain_s)
        placement.release(f"{c.label}#{old.index}")

    async def by_sleep(
        self, c: VariantController, old: Replica, standby: Replica | None, before: KernelChoice
    ) -> Replica:
        """Put ``old`` to sleep and serve from ``standby`` woken (or a new replica); ``old``,
        asleep, is returned: the next standby. On failure ``old`` serves again with
        ``before``."""
        share, placement = c.model.serve.gpu_memory_utilization, self._ctx.placement
        owner, gpus = f"{c.label}#{old.index}", _gpus(old)
        drain = c.model.serve.drain_s
        if not await old.sleep(1, drain):
            raise VariantUnavailable(
                f"{c.label}: the replica could not sleep ({old.state.value}; requests still "
                f"running after drain_s, {drain:.0f} s?); not switched",
                1,
            )
        placement.release(owner)
        log.info("%s: asleep (level 1) to switch kernels; its GPU memory goes to the other "
                 "kernel's replica", old.label)  # fmt: skip
        try:
            await self._bring_in(c, standby)
        except BaseException as exc:
            log.warning("%s: the other kernel's replica did not come up (%s); waking this one",
                        old.label, exc)  # fmt: skip
            c.kernel_choice = before
            placement.claim(owner, gpus, share)
            await old.wake()
            raise
        c.pool.detach(old)  # in the pool until now: the new replica got another index
        return old

    async def _bring_in(self, c: VariantController, standby: Replica | None) -> None:
        """The standby woken on its GPUs if it is asleep there, else a new replica started."""
        placement, share = self._ctx.placement, c.model.serve.gpu_memory_utilization
        in_use = {r.index for r in c.pool.replicas}
        asleep = standby is not None and standby.state is ReplicaState.ASLEEP
        if standby is not None and asleep and standby.index not in in_use:
            owner = f"{c.label}#{standby.index}"
            placement.claim(owner, _gpus(standby), share)
            try:
                await standby.wake()
            except BaseException:
                placement.release(owner)
                with contextlib.suppress(QuantgateError):
                    await standby.stop(0)
                raise
            c.pool.attach(standby)
            log.info("%s: the standby, woken", standby.label)
            return
        if standby is not None:
            await standby.stop(0)
        [index] = c.pool.free_indices(1)
        try:
            await c.pool.add()
        except BaseException:
            placement.release(f"{c.label}#{index}")
            raise
