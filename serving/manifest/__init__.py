"""The model manifest: models, their variants and how to serve them.

Loaded from YAML, validated by pydantic models with ``extra="forbid"``; every error names the
file, the line and the field. Relative paths are relative to the manifest's own folder. One
module per concept: ``methods`` (what a variant may name), ``variants`` and ``recipes`` (a
variant and its recipe), ``serve`` (vLLM options, routing, swapping), ``kubernetes``, ``auth``,
``document`` (a model, the manifest) and ``loader`` (the YAML file).
"""

from serving.manifest.auth import ApiKey, Auth
from serving.manifest.base import NAME_PATTERN, Strict, split_model_name
from serving.manifest.document import Manifest, Model
from serving.manifest.kubernetes import (
    Autoscaling,
    KubernetesOptions,
    ResourceAmounts,
    Resources,
    Toleration,
)
from serving.manifest.loader import key_lines, load_manifest, parse_manifest
from serving.manifest.methods import (
    BACKEND_METHODS,
    BUILTIN_CALIBRATION,
    CALIBRATED,
    DEFAULT_BACKEND,
    GGUF_BITS,
    GGUF_BY_BITS,
    LOAD_TIME,
    MEASURED_AT_LOAD,
    METHOD_BITS,
    NOT_OFFERED,
    RECIPE_FIELDS,
    TORCHAO_GROUPS,
    Backend,
    GgufType,
    Method,
)
from serving.manifest.recipes import recipe_hash, writes_weights
from serving.manifest.serve import OnMissing, Routing, ServeOptions, Swapping
from serving.manifest.variants import Calibration, Upstream, Variant

__all__ = [
    "BACKEND_METHODS", "BUILTIN_CALIBRATION", "CALIBRATED", "DEFAULT_BACKEND", "GGUF_BITS",
    "GGUF_BY_BITS", "LOAD_TIME", "MEASURED_AT_LOAD", "METHOD_BITS", "NAME_PATTERN",
    "NOT_OFFERED", "RECIPE_FIELDS", "TORCHAO_GROUPS", "ApiKey", "Auth", "Autoscaling", "Backend",
    "Calibration", "GgufType", "KubernetesOptions", "Manifest", "Method", "Model", "OnMissing",
    "ResourceAmounts", "Resources", "Routing", "ServeOptions", "Strict", "Swapping",
    "Toleration", "Upstream", "Variant", "key_lines", "load_manifest", "parse_manifest",
    "recipe_hash", "split_model_name", "writes_weights",
]  # fmt: skip
