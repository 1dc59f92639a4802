"""What the cluster objects of a variant or a quantization job are made from.

Plain values read off the manifest, with every path already translated into the cache volume;
``serving.kube.objects`` turns them into Kubernetes objects without looking anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from serving.errors import BackendFailed, JobFailed
from serving.kernels import planned_scheme
from serving.kube import names
from serving.kube.volume import CacheVolume
from serving.manifest import KubernetesOptions, Model, ServeOptions
from serving.manifest import recipe_hash as hash_of
from serving.specs import compile_key


@dataclass(frozen=True)
class VariantWorkload:
    model: str
    variant: str
    recipe_hash: str
    model_path: PurePosixPath  # inside the cache volume
    served_names: tuple[str, ...]
    serve: ServeOptions
    kube: KubernetesOptions
    tensor_parallel_size: int = 1
    quantization: str | None = None
    compile_key: str = "unknown"  # vLLM's compile cache: <cache>/.vllm-cache/<key> on the volume
    gguf: bool = False  # model_path holds model.gguf (vLLM's image needs vllm-gguf-plugin)
    env: dict[str, str] = field(default_factory=dict)  # what a local vLLM of it would get

    @classmethod
    def of(
        cls,
        model_name: str,
        model: Model,
        variant: str,
        model_dir: Path,
        volume: CacheVolume,
        quantization: str | None = None,
        env: dict[str, str] | None = None,
    ) -> VariantWorkload:
        """The workload of ``model_name:variant`` served from ``model_dir`` (a cache path);
        ``env``: the launch spec's (serve.env, the kernel choice's, the CUDA settings).

        Raises BackendFailed when ``model_dir`` is outside the cache (e.g. a base model's
        ``source`` elsewhere on the gateway's disk).
        """
        try:
            path = volume.path(model_dir)
        except ValueError as exc:
            raise BackendFailed(
                f"cannot serve {model_name}:{variant} on Kubernetes: {exc}"
            ) from exc
        return cls(
            model=model_name,
            variant=variant,
            recipe_hash=model.variants[variant].recipe_hash(),
            model_path=path,
            served_names=model.served_names(model_name, variant),
            serve=model.serve,
            kube=model.kubernetes,
            tensor_parallel_size=model.tensor_parallel_size,
            quantization=quantization,
            compile_key=compile_key(model_dir),
            gguf=planned_scheme(model.variants[variant]).format == "gguf",
            env=dict(env or {}),
        )

    @property
    def name(self) -> str:
        """The Deployment's and the Service's name."""
        return names.variant_name(self.model, self.variant)


@dataclass(frozen=True)
class QuantizationWorkload:
    job_id: str
    model: str
    variant: str
    recipe_hash: str
    spec_path: PurePosixPath  # inside the cache volume
    kube: KubernetesOptions
    token_env: str | None = None  # a Hub download: the variable its token goes in

    @classmethod
    def of(
        cls,
        job_id: str,
        model_name: str,
        model: Model,
        variant: str,
        spec_file: Path,
        volume: CacheVolume,
        recipe: dict[str, Any] | None = None,
    ) -> QuantizationWorkload:
        """The Job that runs the worker on ``spec_file`` (written in the cache beforehand);
        ``recipe``: what it runs when that is not one of the model's variants (a source's
        import or download)."""
        try:
            spec_path = volume.path(spec_file)
        except ValueError as exc:
            raise JobFailed(f"cannot quantize on Kubernetes: {exc}") from exc
        return cls(
            job_id=job_id,
            model=model_name,
            variant=variant,
            recipe_hash=hash_of(recipe) if recipe else model.variants[variant].recipe_hash(),
            spec_path=spec_path,
            kube=model.kubernetes,
            token_env=(recipe or {}).get("token_env"),
        )

    @property
    def name(self) -> str:
        return names.job_name(self.job_id)

    @property
    def hub_download(self) -> bool:
        """Whether the Job downloads a Hub source (the only Job that reaches the Hub)."""
        return self.token_env is not None


def quantization_spec(
    volume: CacheVolume,
    source: Path | str,
    output: Path,
    recipe: dict[str, Any],
    evaluate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The worker's spec.json (``serving.worker.quantize``) with the paths a pod sees;
    ``evaluate``: the held-out perplexity to measure after the build (``BuildSpec``).

    Raises JobFailed when the source or the output is outside the cache. A calibration
    dataset given as a local path must be in the cache as well.
    """
    try:
        calibration = dict(recipe.get("calibration") or {})
        if calibration.get("dataset"):
            calibration["dataset"] = str(volume.path(Path(calibration["dataset"])))
        if recipe.get("file"):  # a GGUF source's import: the file as the pod sees it
            recipe = {**recipe, "file": str(volume.path(Path(recipe["file"])))}
        texts = (evaluate or {}).get("texts")
        if texts:  # a model's own evaluation texts, as the pod sees them
            moved = [{**t, "path": str(volume.path(Path(t["path"])))} for t in texts["texts"]]
            evaluate = {**(evaluate or {}), "texts": {**texts, "texts": moved}}
        return {
            "source": str(volume.path(source)) if isinstance(source, Path) else source,
            "output": str(volume.path(output)),
            "recipe": {**recipe, "calibration": calibration} if calibration else recipe,
            "evaluate": evaluate,
        }
    except ValueError as exc:
        raise JobFailed(f"cannot quantize on Kubernetes: {exc}") from exc
