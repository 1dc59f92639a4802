"""Every error Quantgate raises on purpose, written once.

QuantgateError
├── ManifestError            the manifest is unreadable or invalid (file, line, field)
├── SettingsError            a QUANTGATE_* environment variable its setting cannot take
├── ReloadRefused            a valid new manifest that a running gateway cannot take (restart)
├── JobFinished              a job asked to cancel has already ended (how it ended)
├── UnknownModel             a request names a model or variant the manifest does not have
├── VariantUnavailable       not servable now: being built, starting, or the wait ran out
│                            (carries retry_after_s)
├── VariantUnsupported       this machine cannot serve the variant (e.g. no kernel for it)
├── VariantOverBudget        the variant's perplexity increase is over its manifest budget
├── InvalidRecipe            a variant cannot be built as asked (group size, dataset, source),
│                            found before any work starts
├── PlacementError           the variant's replicas cannot fit on this machine's GPUs
├── JobFailed                the quantization job for the variant failed (cause, log tail)
└── BackendFailed            vLLM exited or never became healthy (cause, log tail)
    └── BackendNotReady      a backend something else runs (a chart's Deployment) is not
                             ready; asked again after retry_after_s

Each class carries the HTTP status and the OpenAI ``type``, ``code`` and ``param`` it answers
with; the gateway writes the body from them in one place (``gateway.errors.error_response``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TypeVar


class QuantgateError(Exception):
    """Base class: ``str(exc)`` is a message fit for a user; the class says how it answers."""

    status = 500
    type = "internal_error"
    code = "internal_error"
    param: str | None = None

    def headers(self) -> dict[str, str]:
        """Response headers it adds (Retry-After)."""
        return {}

    def details(self) -> str:
        """What follows the message in the body (a log tail)."""
        return ""


class _BadRequest(QuantgateError):
    status, type = 400, "invalid_request_error"


class _Conflict(QuantgateError):
    status, type = 409, "invalid_request_error"


class _NotServable(QuantgateError):
    status, type, param = 503, "service_unavailable", "model"


class _WithLogTail(QuantgateError):
    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)

    def details(self) -> str:
        return f"\n--- log tail ---\n{self.log_tail}" if self.log_tail else ""


@dataclass(frozen=True)
class ManifestIssue:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestError(_BadRequest):
    code = "invalid_manifest"

    def __init__(self, issues: list[ManifestIssue]) -> None:
        self.issues = issues
        super().__init__("invalid manifest:\n" + "\n".join(f"  {issue}" for issue in issues))


class SettingsError(QuantgateError):
    """Raised before the process does any work; the command line reports it (exit 2)."""

    code = "invalid_settings"


class ReloadRefused(_Conflict):
    code = "restart_needed"


class JobFinished(_Conflict):
    code = "job_already_finished"


class UnknownModel(QuantgateError):
    status, type, code, param = 404, "invalid_request_error", "model_not_found", "model"

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"The model `{name}` does not exist. Known models: {', '.join(known) or 'none'}."
        )


class VariantUnavailable(_NotServable):
    code = "variant_not_ready"

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class VariantUnsupported(_NotServable):
    code = "variant_unsupported_here"


class VariantOverBudget(_NotServable):
    code = "variant_over_quality_budget"


class PlacementError(_NotServable):
    """The request cannot fit on this machine's GPUs."""

    code = "insufficient_resources"


class InvalidRecipe(_NotServable):
    code = "invalid_recipe"  # the request is fine; the manifest's recipe cannot be built


class JobFailed(_WithLogTail, _NotServable):
    code = "variant_build_failed"


class BackendFailed(_WithLogTail):
    status, type, code = 502, "upstream_error", "backend_failed"


class BackendNotReady(BackendFailed):
    """A backend that something else runs and restarts (a chart's Deployment on Kubernetes)
    was not ready: that keeps trying, so the failure holds only until ``retry_after_s`` has
    passed, and the next request then asks again (``still_holds``)."""

    status, type, code, param = 503, "service_unavailable", "backend_not_ready", "model"

    def __init__(self, message: str, log_tail: str = "", retry_after_s: float = 30.0) -> None:
        super().__init__(message, log_tail)
        self.ask_again_at = time.monotonic() + retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.ask_again_at - time.monotonic())))}


E = TypeVar("E", bound=QuantgateError)


def still_holds(failure: E | None) -> E | None:
    """``failure``, or None once it is a BackendNotReady whose time to ask again has come."""
    due = isinstance(failure, BackendNotReady) and time.monotonic() >= failure.ask_again_at
    return None if due else failure
