"""The model manifest: models, their variants and how to serve them.

Loaded from YAML, validated by pydantic models with ``extra="forbid"``; every error names the
file, the line and the field. Relative paths are relative to the manifest's own folder. One
module per concept: ``variants`` and ``recipes`` (a variant and its recipe; what each method
takes is ``serving.methods``), ``serve`` (vLLM options, routing, swapping), ``kubernetes``,
``auth``, ``document`` (a model, the manifest) and ``loader`` (the YAML file).
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
from serving.manifest.recipes import recipe_hash, writes_weights
from serving.manifest.serve import (
    HealthCheck,
    KernelSwitch,
    OnMissing,
    Routing,
    ServeOptions,
    Swapping,
)
from serving.manifest.variants import Calibration, Upstream, Variant
from serving.methods import NOT_OFFERED, Backend, GgufType, Method

__all__ = [
    "NAME_PATTERN", "NOT_OFFERED", "ApiKey", "Auth", "Autoscaling", "Backend",
    "Calibration", "GgufType", "HealthCheck", "KernelSwitch", "KubernetesOptions", "Manifest",
    "Method", "Model", "OnMissing",
    "ResourceAmounts", "Resources", "Routing", "ServeOptions", "Strict", "Swapping",
    "Toleration", "Upstream", "Variant", "key_lines", "load_manifest", "parse_manifest",
    "recipe_hash", "split_model_name", "writes_weights",
]  # fmt: skip
