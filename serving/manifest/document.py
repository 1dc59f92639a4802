"""A model and the manifest document that holds models, keys, aliases and swapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from serving.evaluation import Evaluation
from serving.manifest.auth import Auth
from serving.manifest.base import (
    Loc,
    Name,
    Strict,
    field_errors,
    resolve_path,
    split_model_name,
)
from serving.manifest.kubernetes import KubernetesOptions
from serving.manifest.serve import OnMissing, Routing, ServeOptions, Swapping
from serving.manifest.variants import Variant
from serving.sources import ModelSource


class Model(Strict):
    source: str | None = Field(
        None,
        description="The base checkpoint: a local Hugging Face folder, a GGUF file (imported "
        "once into the cache), or hf://org/name[@revision] (downloaded once into the cache).",
    )
    source_token_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="hf:// sources: the environment variable holding a Hub token (default "
        "HF_TOKEN)",
    )
    default_variant: Name
    variants: dict[Name, Variant]
    on_missing: OnMissing = OnMissing()
    serve: ServeOptions = ServeOptions()
    routing: Routing = Routing()
    kubernetes: KubernetesOptions = KubernetesOptions()
    evaluation: Evaluation | None = Field(
        None, description="held-out texts of your own, measured beside the built-in domains"
    )

    _origin: ModelSource | None = PrivateAttr(None)
    _cache_dir: Path | None = PrivateAttr(None)

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | Path):
            return value  # None, or a type error pydantic names
        base = (info.context or {}).get("base_dir")
        return str(ModelSource.parse(str(value), Path(base) if base else None))

    def model_post_init(self, context: Any, /) -> None:
        self._origin = ModelSource.parse(self.source) if self.source is not None else None
        spec = self.evaluation.spec() if self.evaluation is not None else None
        for variant in self.variants.values():
            variant.belongs_to(self.source, spec)

    @property
    def origin(self) -> ModelSource:
        """The parsed source; only variants with an upstream may do without one."""
        if self._origin is None:
            raise ValueError("this model has no source: its variants are upstreams")
        return self._origin

    @property
    def source_path(self) -> Path:
        """The checkpoint folder the quantizer and vLLM read: the source itself, or where a
        GGUF file or Hub repository is prepared under the manifest's cache."""
        if self.origin.prepared_here:
            return self.origin.checkpoint(Path())
        if self._cache_dir is None:
            raise ValueError("a GGUF or Hub source is prepared under a manifest's cache_dir")
        return self.origin.checkpoint(self._cache_dir)

    def bind_cache(self, cache_dir: Path) -> None:
        """Where GGUF and Hub sources are prepared (the manifest's ``cache_dir``)."""
        self._cache_dir = cache_dir

    @model_validator(mode="after")
    def _check_default(self) -> Self:
        found: list[tuple[Loc, str, object]] = []
        local = [name for name, v in self.variants.items() if v.upstream is None]
        if self.source is None and local:
            why = f"source is required: variants {', '.join(local)} are served locally"
            found.append(((), why, None))
        if self.source_token_env and not (self.source or "").startswith("hf://"):
            found.append((("source_token_env",), "is for hf:// sources", self.source_token_env))
        if self.default_variant not in self.variants:
            known = ", ".join(sorted(self.variants))
            why = f"{self.default_variant!r} is not one of the model's variants ({known})"
            found.append((("default_variant",), why, self.default_variant))
        if found:
            raise field_errors("Model", found)
        return self

    @model_validator(mode="after")
    def _check_parallelism(self) -> Self:
        serve, kube = self.serve.tensor_parallel_size, self.kubernetes.tensor_parallel_size
        if serve is not None and kube is not None and serve != kube:
            why = f"tensor_parallel_size is {serve} under serve and {kube} under kubernetes; "
            why += "set it once"
            raise field_errors("Model", [(("kubernetes", "tensor_parallel_size"), why, kube)])
        gpus, tp = self.kubernetes.gpus, self.tensor_parallel_size
        if gpus and gpus < tp:
            why = f"tensor_parallel_size {tp} needs at least {tp} gpus, not {gpus}"
            raise field_errors("Model", [(("kubernetes", "gpus"), why, gpus)])
        return self

    @property
    def tensor_parallel_size(self) -> int:
        """The one tensor-parallel size, wherever the manifest sets it (default 1)."""
        return self.serve.tensor_parallel_size or self.kubernetes.tensor_parallel_size or 1

    def served_names(self, model_name: str, variant: str) -> tuple[str, ...]:
        """The names vLLM serves ``variant`` under (``--served-model-name``): ``model:variant``,
        and ``model`` too for the default variant."""
        own = f"{model_name}:{variant}"
        return (own, model_name) if variant == self.default_variant else (own,)


class Manifest(Strict):
    version: Literal[1] = 1
    cache_dir: Path = Field(description="Where built variants, job logs and vLLM logs live.")
    models: dict[Name, Model] = Field(
        default_factory=dict,
        description="What it serves (none: nothing until a reload of the manifest adds some).",
    )
    auth: Auth | None = None
    aliases: dict[str, str] = Field(
        default_factory=dict, description="other names clients may use: alias -> model[:variant]"
    )
    swapping: Swapping | None = Field(
        None, description="variants take turns on GPUs that cannot hold them all awake"
    )

    @model_validator(mode="after")
    def _check_aliases(self) -> Self:
        found: list[tuple[Loc, str, object]] = []
        for alias, target in self.aliases.items():
            model, variant = split_model_name(target)
            known = self.models.get(model)
            if known is None or (variant not in (None, "auto") and variant not in known.variants):
                found.append((("aliases", alias), f"points at unknown {target!r}", target))
        if found:
            raise field_errors("Manifest", found)
        return self

    _cache_dir = field_validator("cache_dir")(resolve_path)

    @model_validator(mode="after")
    def _bind_sources(self) -> Self:
        for model in self.models.values():
            model.bind_cache(self.cache_dir)
        return self

    @model_validator(mode="after")
    def _check_key_models(self) -> Self:
        """Every model a key names must exist, so a typo cannot silently lock a client out."""
        found: list[tuple[Loc, str, object]] = []
        for i, key in enumerate(self.auth.keys if self.auth else ()):
            for j, pattern in enumerate(key.models):
                model, _, variant = pattern.partition(":")
                known = self.models.get(model)
                if pattern == "*" or (known and variant in ("", "*", *known.variants)):
                    continue
                message = f"{pattern!r} names no model or variant of this manifest"
                found.append((("auth", "keys", i, "models", j), message, pattern))
        if found:
            raise field_errors("Manifest", found)
        return self
