"""Evaluation texts a manifest names for a model, measured beside (or instead of) the built-in
domains.

A model's ``evaluation.texts`` are the user's own held-out text: a ``.txt`` file (each
non-empty line one document) or a ``.jsonl`` file (each row a ``text_field`` string, or a
``messages`` list rendered with the model's chat template). Each is one more domain of the
perplexity measure, reported on its own, and the quality gate reads the worst domain, so a
variant that fits the built-in text but loses the user's is refused. A file's sha256 is part of
every variant's recipe: new texts are a new recipe, built (and so measured) again on demand.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BUILTIN_DOMAINS = ("docs", "prose", "chat", "code")  # serving.worker.perplexity's own texts
SUFFIXES = (".txt", ".jsonl")


class EvalText(BaseModel):
    """One evaluation domain of the user's: a name, and the file its text is in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the domain's name")
    path: Path = Field(
        description=".txt (one document per non-empty line) or .jsonl ('text' or 'messages' "
        "rows); relative to the manifest"
    )
    text_field: str = Field("text", description=".jsonl: the text column of each row")
    max_tokens: int | None = Field(
        None, ge=256, description="measure only the first N tokens (default: all of them)"
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        path = value if value.is_absolute() or base is None else (Path(base) / value).resolve()
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path.name}: evaluation text is a .txt or .jsonl file")
        if not path.is_file():
            raise ValueError(f"no evaluation text at {path}")
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty")
        return path

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def spec(self) -> dict[str, Any]:
        """What the worker is told (the path) and what is hashed (the content)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "text_field": self.text_field,
            "max_tokens": self.max_tokens,
        }


class Evaluation(BaseModel):
    """The held-out text a model's variants are measured on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    texts: tuple[EvalText, ...] = Field(min_length=1)
    builtin: bool = Field(
        True, description="measure the built-in domains too (docs, prose, chat, code)"
    )

    @model_validator(mode="after")
    def _check_names(self) -> Self:
        names = [t.name for t in self.texts]
        taken = {*BUILTIN_DOMAINS} if self.builtin else set()
        for i, name in enumerate(names):
            if name in taken or name in names[:i]:
                what = "a built-in domain" if name in BUILTIN_DOMAINS else "named twice"
                raise ValueError(f"evaluation text {name!r} is {what}; give it another name")
        return self

    def spec(self) -> dict[str, Any]:
        return {"builtin": self.builtin, "texts": [t.spec() for t in self.texts]}


def measure_key(spec: dict[str, Any] | None) -> str:
    """What an evaluation spec changes in the measure (empty: the built-in domains only): part
    of the key under which a base's perplexity is kept."""
    if spec is None:
        return ""
    texts = [f"{t['name']}:{t['sha256'][:16]}:{t['text_field']}:{t['max_tokens']}"
             for t in spec["texts"]]  # fmt: skip
    return f"|builtin={spec['builtin']}|" + ",".join(texts)
