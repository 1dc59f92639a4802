"""Every error Quantgate raises on purpose, written once.

QuantgateError
├── ManifestError            the manifest is unreadable or invalid (file, line, field)
├── ReloadRefused            a valid new manifest that a running gateway cannot take (restart)
├── UnknownModel             a request names a model or variant the manifest does not have
├── VariantUnavailable       not servable now: being built, starting, or the wait ran out
│                            (carries retry_after_s)
├── VariantUnsupported       this machine cannot serve the variant (e.g. no kernel for it)
├── VariantOverBudget        the variant's perplexity increase is over its manifest budget
├── InvalidRecipe            a variant cannot be built as asked (group size, dataset, source),
│                            found before any work starts
├── JobFailed                the quantization job for the variant failed (cause, log tail)
└── BackendFailed            vLLM exited or never became healthy (cause, log tail)

The gateway maps these, in one place, to OpenAI-style error bodies and status codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class QuantgateError(Exception):
    """Base class: ``str(exc)`` is a message fit for a user."""


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


class ManifestError(QuantgateError):
    def __init__(self, issues: list[ManifestIssue]) -> None:
        self.issues = issues
        super().__init__("invalid manifest:\n" + "\n".join(f"  {issue}" for issue in issues))


class ReloadRefused(QuantgateError):
    pass


class UnknownModel(QuantgateError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"The model `{name}` does not exist. Known models: {', '.join(known) or 'none'}."
        )


class VariantUnavailable(QuantgateError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class VariantUnsupported(QuantgateError):
    pass


class VariantOverBudget(QuantgateError):
    pass


class InvalidRecipe(QuantgateError):
    pass


class JobFailed(QuantgateError):
    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)


class BackendFailed(QuantgateError):
    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)
