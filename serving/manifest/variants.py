"""A variant: the base weights, a quantization recipe, or an upstream already running."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from serving.manifest.base import Strict, resolve_path
from serving.manifest.recipes import recipe_hash, recipe_problems
from serving.methods import BUILTIN_CALIBRATION, NOT_OFFERED, Backend, GgufType, Method, family
from serving.methods.gguf import ggml_type


class Calibration(Strict):
    """Calibration text: a local .txt/.jsonl file, a folder of them, a ``datasets``
    ``save_to_disk`` folder, or (unset) the built-in mix: the corpus's train split as prose and
    as chat turns in the model's template, and Python code."""

    dataset: Path | None = None
    split: str | None = Field(
        None, description="datasets folders with splits: which one (default train)"
    )
    text_field: str = Field("text", description="the text column of .jsonl files and datasets")
    samples: int = Field(64, ge=1, le=100_000)
    max_seq_length: int = Field(256, ge=16, le=32_768)
    seed: int = 0

    _dataset = field_validator("dataset")(resolve_path)

    @model_validator(mode="after")
    def _check_split(self) -> Self:
        if self.dataset is None and self.split not in (None, "train"):
            raise ValueError(
                "the built-in corpus calibrates on its 'train' split only "
                "(its held-out split is kept for perplexity)"
            )
        return self

    def recipe(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["dataset"] = str(self.dataset) if self.dataset else None
        if self.dataset is None:  # what the built-in mix is: a new mix is a new recipe
            data["builtin"] = BUILTIN_CALIBRATION
        return data


class Upstream(Strict):
    """An OpenAI-compatible server that is already running: Quantgate routes to it, meters it,
    limits it, but neither builds nor launches it."""

    url: str = Field(
        pattern=r"^https?://",
        description="Base URL, as an OpenAI client takes it: a trailing /v1 is taken off (the "
        "gateway adds the request's /v1/... path)",
    )
    api_key_env: str | None = Field(None, description="Environment variable holding its key")
    model: str | None = Field(
        None,
        description="Model name it serves; default: the one its /v1/models lists (asked once)",
    )
    health_path: str | None = Field(
        None,
        pattern=r"^/",
        description="A path asked every serve.health_check.interval_s while the gateway uses "
        "it (vLLM: /health; most OpenAI-compatible servers: /v1/models, with api_key_env's "
        "key); serve.health_check.failures unanswered asks in a row (no 2xx) take it out of "
        "routing (503 at once, or the model's fallback) until one is answered. Unset: not "
        "asked",
    )

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header its key gives (none without ``api_key_env``)."""
        if not self.api_key_env:
            return {}
        return {"authorization": f"Bearer {os.environ.get(self.api_key_env, '')}"}

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        base = value.rstrip("/")
        return base.removesuffix("/v1") if base.endswith("/v1") else base


class Variant(Strict):
    """One way of serving a model: the base weights, or a quantization recipe."""

    method: Method
    backend: Backend | None = Field(None, description="default: llmcompressor (gguf: llamacpp)")
    bits: int | None = Field(None, description="weight bits; default 4 (w8a8, fp8: 8)")
    activation_bits: Literal[8, 16] | None = Field(
        None, description="16: weight-only; 8: int8 dynamic per-token activations"
    )
    group_size: int | None = Field(
        None, description="Weights per quantization group (default 128); -1: per channel."
    )
    symmetric: bool | None = Field(None, description="default: yes, except AWQ")
    gguf_type: GgufType | None = Field(
        None, description="gguf only: llama.cpp's type (default q4_k_m; bits 8 -> q8_0)"
    )
    ignore: tuple[str, ...] = ("lm_head",)
    calibration: Calibration | None = None
    upstream: Upstream | None = None
    _evaluation: dict[str, Any] | None = PrivateAttr(None)
    _source: str | None = PrivateAttr(None)
    max_ppl_increase: float | None = Field(
        None,
        description="Quality gate: refuse to serve the variant when its held-out perplexity "
        "exceeds the base's by more than this fraction (0.05 or '5%').",
    )

    @field_validator("max_ppl_increase", mode="before")
    @classmethod
    def _percent(cls, value: object) -> object:
        """'5%' is 0.05; a bare number is a fraction, so 5 (+500 %, a likely slip for 5 %) is
        refused: write '500%' to mean it."""
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
            raise ValueError(
                f"max_ppl_increase {value} would mean +{value:.0%}: write a fraction "
                f"(0.05) or a percentage ('{value}%')"
            )
        return value

    @field_validator("gguf_type", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # llama.cpp writes Q4_K_M

    @field_validator("method", mode="before")
    @classmethod
    def _offered(cls, value: object) -> object:
        reason = NOT_OFFERED.get(str(value).lower()) if isinstance(value, str) else None
        if reason:
            raise ValueError(f"method {value!r} is not offered: {reason}")
        return value

    @model_validator(mode="after")
    def _check_recipe(self) -> Self:
        problems = recipe_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def quantized(self) -> bool:
        return self.method is not Method.NONE

    @property
    def needs_build(self) -> bool:
        """Whether a quantization job makes it (FP8 and bitsandbytes NF4: vLLM quantizes at load;
        bitsandbytes int8 is built: vLLM loads LLM.int8 only from a checkpoint)."""
        return family(self.method).needs_build(self)

    @property
    def measured_at_load(self) -> bool:
        """Quantized by vLLM at load, yet measured first: a job loads the base through
        transformers with the same quantization and measures its perplexity (bitsandbytes NF4;
        FP8 is measured through its first server instead, ``measured_when_served``)."""
        return family(self.method).measured_at_load(self)

    @property
    def measured_when_served(self) -> bool:
        """Quantized by vLLM at load and measured through its first server before that takes
        requests (FP8): its quality gate holds for what vLLM serves."""
        return family(self.method).measured_when_served(self)

    @property
    def needs_job(self) -> bool:
        """Whether a job runs before the variant is served: a build, or a measure only."""
        return self.needs_build or self.measured_at_load

    @property
    def serve_quantization(self) -> str | None:
        """vLLM's ``--quantization`` for variants quantized at load rather than built."""
        return None if self.needs_build else family(self.method).at_load.get(self.method)

    @property
    def weight_bits(self) -> int:
        return family(self.method).weight_bits(self)

    @property
    def ggml_type(self) -> GgufType:
        """The GGUF type: the one named, else the one for ``bits`` (default Q4_K_M)."""
        return ggml_type(self)

    @property
    def act_bits(self) -> int:
        return family(self.method).act_bits(self)

    @property
    def scheme(self) -> str:
        """``W4A16``-style name of the weight and activation precision."""
        return family(self.method).scheme(self)

    def recipe(self) -> dict[str, Any]:
        """The recipe with defaults filled in: what the worker is told and what is hashed. A
        variant that is built or measured also names its model's source (another source, another
        build) and the model's own evaluation texts, where it names any (new texts, a new
        measure)."""
        recipe = self._method_recipe()
        if self.needs_job or self.measured_when_served:
            if self._source is not None:
                recipe["source"] = self._source
            if self._evaluation is not None:
                recipe["evaluation"] = self._evaluation
        return recipe

    def belongs_to(self, source: str | None, evaluation: dict[str, Any] | None) -> None:
        """Its model's source (the folder, GGUF file or Hub repository and revision, as the
        manifest names it) and evaluation texts; ``Model`` sets them on each variant."""
        self._source, self._evaluation = source, evaluation

    def _method_recipe(self) -> dict[str, Any]:
        if not self.needs_build:
            return {"method": self.method.value}
        return family(self.method).recipe(self)

    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe())
