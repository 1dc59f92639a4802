"""What the fleet says about a variant: its lifecycle state and a typed status for the admin
API, and a request's lease on a replica."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from serving.replica import Replica
from serving.swapping import residency

if TYPE_CHECKING:
    from serving.fleet.controller import VariantController


class VariantState(StrEnum):
    MISSING = "missing"  # quantized variant not built yet
    BUILDING = "building"
    BUILT = "built"  # on disk, no replica running
    STARTING = "starting"
    READY = "ready"
    UNREACHABLE = "unreachable"  # up, but every replica's circuit is open after failed requests
    FAILED = "failed"
    ASLEEP = "asleep"  # swapped out (vLLM sleep mode, or stopped where there is none)
    UNSUPPORTED = "unsupported"  # this machine has no kernel for it
    OVER_BUDGET = "over_budget"  # built, but its perplexity increase is over max_ppl_increase


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True)


class KernelStatus(_Status):
    """The kernel a variant is (or would be) served with, and why."""

    quantization: str | None
    kernel: str | None
    alternatives: list[str]
    reason: str
    env: dict[str, str]
    pinned: str | None  # serve.kernel
    tuning: bool  # being measured now
    measured: dict[str, Any]  # the tuner's figures, once measured
    optimize_for: str  # serve.optimize_for
    load: dict[str, Any] | None  # optimize_for auto: the load followed, the last switch


class VariantStatus(_Status):
    """One variant, as ``GET /admin/backends`` shows it."""

    model: str
    variant: str
    default: bool
    state: VariantState
    residency: str
    method: str
    scheme: str
    recipe_hash: str | None
    max_ppl_increase: float | None
    kernel: KernelStatus
    error: str | None
    job: dict[str, Any] | None
    replicas: list[dict[str, Any]]
    report: dict[str, Any] | None


@dataclass(frozen=True)
class Lease:
    """One request's hold on a replica: release it when the response is done."""

    model: str
    variant: str
    url: str
    replica: Replica
    headers: dict[str, str]
    served_names: tuple[str, ...] = ()  # what the replica answers to; (): unknown
    failure_threshold: int = 3  # the model's routing policy: failures in a row open the circuit
    open_s: float = 10.0  # and keep it open this long
    trial: bool = False  # the one request a half-open circuit lets through

    def forward_name(self, requested: str) -> str | None:
        """The model name the forwarded body must carry when the replica does not answer to
        ``requested`` (an alias, ``model:auto``, a fallback variant, a static upstream's own
        name); None: the body goes on as the client sent it."""
        if not self.served_names or requested in self.served_names:
            return None
        return self.served_names[0]

    def release(self) -> None:
        self.replica.release(self.trial)

    def succeeded(self) -> None:
        """The replica answered: its circuit closes."""
        self.replica.record_success()

    def failed(self) -> None:
        """The replica could not answer: counted toward opening its circuit."""
        self.replica.record_failure(self.failure_threshold, self.open_s)


def variant_status(c: VariantController, load: dict[str, Any] | None = None) -> VariantStatus:
    """What the controller ``c`` knows of its variant, as the admin API shows it; ``load``:
    what the kernel follower (``optimize_for: auto``) saw of it."""
    variant, ctx, kernel = c.variant, c.ctx, c.kernel()
    last = ctx.jobs.last(c.model_name, variant)
    if last is None and variant.upstream is None:  # the base: the source's import/download
        last = ctx.jobs.source_job(c.model)
    error = (None if kernel.supported else kernel.reason) or c.over_budget()
    measured = {} if variant.upstream else ctx.store.tuning(c.model_name, variant)
    return VariantStatus(
        model=c.model_name, variant=c.name, default=c.name == c.model.default_variant,
        state=c.state(), residency=residency(c.pool.replicas).value,
        method=variant.method.value, scheme=variant.scheme,
        recipe_hash=variant.recipe_hash() if variant.quantized else None,
        max_ppl_increase=variant.max_ppl_increase,
        kernel=KernelStatus(
            quantization=kernel.quantization, kernel=kernel.kernel,
            alternatives=list(kernel.alternatives), reason=kernel.reason, env=kernel.env,
            pinned=c.model.serve.kernel, measured=measured,
            tuning=(c.model_name, c.name) in ctx.tuning.active,
            optimize_for=c.model.serve.optimize_for, load=load,
        ),
        error=error or (str(c.failure) if c.failure else None),
        job=last.summary() if last else None, replicas=c.pool.describe(),
        report=ctx.store.report(c.model_name, variant)
        if variant.needs_job or variant.measured_when_served
        else None,
    )  # fmt: skip
