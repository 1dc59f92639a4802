"""Client API keys, named by reference (environment, file, digest), never by value."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from serving.manifest.base import Loc, Name, Strict, field_errors, resolve_path

ModelPattern = Annotated[
    str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,62}(:(\*|[a-z0-9][a-z0-9._-]{0,62}))?)$")
]


class ApiKey(Strict):
    """A client key, by reference only: an environment variable, a file, or its SHA-256."""

    name: Name = Field(description="Shown in the usage ledger and metrics; never the key.")
    key_env: str | None = Field(None, description="Environment variable holding the key.")
    key_file: Path | None = Field(None, description="File holding the key (one line).")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 digest of the key."
    )
    models: tuple[ModelPattern, ...] = Field(
        min_length=1, description="'*', 'model' (any variant), 'model:*' or 'model:variant'."
    )
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion tokens")
    token_quota: int | None = Field(None, ge=1, description="lifetime prompt + completion tokens")

    _key_file = field_validator("key_file")(resolve_path)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [f for f in ("key_env", "key_file", "key_sha256") if getattr(self, f) is not None]
        if not given:
            raise ValueError("give one of key_env, key_file, key_sha256 (never the key)")
        if len(given) > 1:  # at the second one given
            why = f"{given[0]} is given already: give one of key_env, key_file, key_sha256"
            raise field_errors("ApiKey", [((given[1],), why, getattr(self, given[1]))])
        return self


class Auth(Strict):
    """Client API keys; without this block the gateway is open."""

    keys: tuple[ApiKey, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        """A name used twice is an error at its second use (the ledger and limits go by it)."""
        seen: set[str] = set()
        found: list[tuple[Loc, str, object]] = []
        for i, key in enumerate(self.keys):
            if key.name in seen:
                found.append(
                    (("keys", i, "name"), "is already a key's name; names must be unique", key.name)
                )
            seen.add(key.name)
        if found:
            raise field_errors("Auth", found)
        return self
