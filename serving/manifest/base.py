"""What every part of the manifest shares: strict models, names, paths relative to the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Loc = tuple[str | int, ...]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


def split_model_name(name: str) -> tuple[str, str | None]:
    """``tiny`` -> (tiny, None); ``tiny:gptq-w4a16`` -> (tiny, gptq-w4a16)."""
    model, sep, variant = name.partition(":")
    return model, (variant if sep else None)


def field_errors(title: str, found: Sequence[tuple[Loc, str, object]]) -> ValidationError:
    """Errors a model's own validator finds, each at its field (``loc`` relative to the model,
    with the value found there): pydantic prefixes where the model sits, so every error names
    its field, and the loader its line."""
    details = [
        InitErrorDetails(type=PydanticCustomError("invalid", message), loc=loc, input=value)
        for loc, message, value in found
    ]
    return ValidationError.from_exception_data(title, details)
