"""Where a model's base checkpoint comes from, and where it lies once prepared.

A manifest's ``source`` is one of:

    source: ../models/smol                       a local Hugging Face folder, used in place
    source: ../models/SmolLM2.Q4_1.gguf          a GGUF file, imported once (dequantized to a
                                                 bf16 Hugging Face checkpoint) into
                                                 <cache>/.sources/gguf-<sha256 of the file>/
    source: hf://HuggingFaceTB/SmolLM2-135M@main a Hugging Face Hub repository (``@revision``
                                                 optional: a branch, tag or commit), downloaded
                                                 once into <cache>/.sources/hf-<org>--<name>--<rev>/

A GGUF file or a Hub repository is prepared by a job like a variant's build (its own process,
progress, a staging folder renamed into place with ``report.json``); the quantizer and vLLM
then both read the prepared folder. A prepared source is never fetched again: a Hub branch is
read once and kept (pin a commit, or remove the folder, to take a newer one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

HUB_SCHEME = "hf://"
HUB_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
SOURCES_DIR = ".sources"


class SourceKind(StrEnum):
    FOLDER = "folder"
    GGUF = "gguf"
    HUB = "hub"


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``source``: a folder, a GGUF file or a Hub repository."""

    kind: SourceKind
    path: Path | None = None  # folder or GGUF file
    repo: str | None = None  # org/name on the Hub
    revision: str | None = None  # as written; None: the default branch

    @classmethod
    def parse(cls, text: str, base_dir: Path | None = None) -> ModelSource:
        """Raise ValueError with the reason when ``text`` is no source Quantgate reads."""
        if text.startswith(HUB_SCHEME):
            repo, _, revision = text[len(HUB_SCHEME) :].partition("@")
            if not HUB_PATTERN.match(repo):
                raise ValueError(f"{text!r}: a Hub source is hf://org/name[@revision]")
            if revision and not REVISION_PATTERN.match(revision):
                raise ValueError(f"{text!r}: {revision!r} is not a branch, tag or commit")
            return cls(SourceKind.HUB, repo=repo, revision=revision or None)
        if "://" in text:
            raise ValueError(f"{text!r}: a source is a local path or hf://org/name[@revision]")
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = (base_dir / path).resolve()
        kind = SourceKind.GGUF if path.suffix.lower() == ".gguf" else SourceKind.FOLDER
        return cls(kind, path=path)

    def __str__(self) -> str:
        if self.kind is SourceKind.HUB:
            return f"{HUB_SCHEME}{self.repo}" + (f"@{self.revision}" if self.revision else "")
        return str(self.path)

    @property
    def prepared_here(self) -> bool:
        """Whether it is used in place (a folder), not prepared by a job."""
        return self.kind is SourceKind.FOLDER

    @cached_property
    def sha256(self) -> str:
        """The GGUF file's SHA-256, read once per manifest load (~0.2 s for 100 MB)."""
        assert self.path is not None
        h = hashlib.sha256()
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            raise FileNotFoundError(
                f"GGUF source {self.path} cannot be read: {exc.strerror or exc}"
            ) from exc
        return h.hexdigest()

    def key(self) -> str:
        """The prepared folder's name under ``<cache>/.sources/``."""
        if self.kind is SourceKind.GGUF:
            return f"gguf-{self.sha256[:16]}"
        if self.kind is SourceKind.HUB:
            assert self.repo is not None
            revision = (self.revision or "main").replace("/", "--")
            return f"hf-{self.repo.replace('/', '--')}--{revision}"
        raise ValueError("a folder source is used in place")

    def checkpoint(self, cache_dir: Path) -> Path:
        """The Hugging Face folder the quantizer and vLLM read."""
        if self.kind is SourceKind.FOLDER:
            assert self.path is not None
            return self.path
        return cache_dir / SOURCES_DIR / self.key()

    def recipe(self, token_env: str | None = None) -> dict[str, Any]:
        """What the preparing job is told (and what its report records)."""
        if self.kind is SourceKind.GGUF:
            return {
                "method": "import-gguf",
                "backend": "transformers",
                "file": str(self.path),
                "sha256": self.sha256,
            }
        if self.kind is SourceKind.HUB:
            return {
                "method": "download",
                "backend": "huggingface_hub",
                "repo": self.repo,
                "revision": self.revision,
                "token_env": token_env or "HF_TOKEN",
            }
        raise ValueError("a folder source is used in place")
