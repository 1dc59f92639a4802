"""What every part of the manifest shares: strict models, names, paths relative to the file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


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
