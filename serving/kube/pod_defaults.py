"""The chart's settings of the pods the launcher creates: ``launcher.yaml``.

The Helm chart renders the ``vllm`` and ``quantizer`` values that apply to the pods the gateway
creates, and ``imagePullSecrets``, into ``/etc/quantgate/launcher.yaml``
(``QUANTGATE_LAUNCHER_CONFIG``, read by ``KubernetesSettings``). They are defaults under each
model's ``kubernetes:`` block: where the manifest sets ``gpus``, ``node_selector``,
``tolerations`` or ``resources``, or a ``gpu_memory_utilization`` (under ``kubernetes`` or
``serve``), the manifest's value wins. Pull secrets, security contexts, affinity, priority and
runtime classes, the image pull policy, the pods' extra labels and annotations (Quantgate's own
win where a key is the same) and the Jobs' deadline and TTL come from here only. Without the
file a pod gets the manifest's settings alone (a CPU pod unless the manifest asks for GPUs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from kubernetes.aio.client import (
    V1Affinity,
    V1EnvVar,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1ResourceRequirements,
    V1SecurityContext,
    V1Toleration,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from serving.manifest import KubernetesOptions, ServeOptions

GPU = "nvidia.com/gpu"


def _unset_if_empty(value: Any) -> Any:
    """The chart's ``""`` and ``{}`` mean: not set."""
    return None if value in ("", {}) else value


def _quantity(value: Any) -> Any:
    """A quantity the chart gives as a number (``cpu: 4``) as the API's string."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _quantities(value: Any) -> Any:
    """Requests and limits, with the chart's numbers as the API's strings."""
    if isinstance(value, dict):
        value = {
            key: {name: _quantity(q) for name, q in (amounts or {}).items()}
            if key in ("requests", "limits")
            else amounts
            for key, amounts in value.items()
        }
    return _unset_if_empty(value)


Unset = BeforeValidator(_unset_if_empty)


def _set(kube: KubernetesOptions, field: str) -> bool:
    """Whether the manifest's ``kubernetes:`` block sets ``field``."""
    return field in kube.model_fields_set


class _Values(BaseModel):
    """Chart values: camelCase, as the chart renders them; an unknown key is an error."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class PodDefaults(_Values):
    """What the chart gives every pod of one kind (vLLM or quantization Job)."""

    gpus: int | None = Field(None, ge=0)
    gpu_resource_name: str = GPU
    env: tuple[V1EnvVar, ...] = ()
    resources: Annotated[V1ResourceRequirements | None, BeforeValidator(_quantities)] = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[V1Toleration, ...] | None = None
    affinity: Annotated[V1Affinity | None, Unset] = None
    priority_class_name: Annotated[str | None, Unset] = None
    pod_security_context: Annotated[V1PodSecurityContext | None, Unset] = None
    security_context: Annotated[V1SecurityContext | None, Unset] = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)

    def node_selector_for(self, kube: KubernetesOptions) -> dict[str, str] | None:
        chosen = kube.node_selector if _set(kube, "node_selector") else self.node_selector
        return dict(chosen) or None

    def tolerations_for(self, kube: KubernetesOptions) -> list[V1Toleration] | None:
        if _set(kube, "tolerations") or self.tolerations is None:
            return [
                V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
                for t in kube.tolerations
            ] or None
        return list(self.tolerations) or None

    def resources_for(self, kube: KubernetesOptions, gpus: int) -> V1ResourceRequirements:
        """Requests and limits (the manifest's, else the chart's), plus ``gpus`` GPUs (a
        limit: requests follow)."""
        if _set(kube, "resources") or self.resources is None:
            wanted = kube.resources
            requests = {k: v for k, v in wanted.requests.model_dump().items() if v is not None}
            limits = {k: v for k, v in wanted.limits.model_dump().items() if v is not None}
        else:
            requests = dict(self.resources.requests or {})
            limits = dict(self.resources.limits or {})
        if gpus:
            limits[self.gpu_resource_name] = str(gpus)
        return V1ResourceRequirements(requests=requests or None, limits=limits or None)

    def pod_metadata(self, labels: dict[str, str], notes: dict[str, str]) -> V1ObjectMeta:
        """A pod template's labels and annotations: the chart's, then Quantgate's own, which
        win (the selectors and the gateway's bookkeeping rely on them)."""
        return V1ObjectMeta(
            labels={**self.pod_labels, **labels},
            annotations={**self.pod_annotations, **notes} or None,
        )

    def env_after(self, env: list[V1EnvVar]) -> list[V1EnvVar]:
        """``env``, then the chart's variables that it does not set."""
        taken = {e.name for e in env}
        return [*env, *(e for e in self.env if e.name not in taken)]


class VllmPods(PodDefaults):
    """The chart's ``vllm`` values that dynamic mode uses (the probes follow the manifest's
    ``serve.startup_timeout_s``; tensor parallelism is the manifest's)."""

    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    extra_args: tuple[str, ...] = ()  # after the manifest's serve.extra_args
    runtime_class_name: Annotated[str | None, Unset] = None
    shm_size: Annotated[str | None, BeforeValidator(_quantity), Unset] = None
    termination_grace_period_seconds: int | None = Field(None, ge=0)

    def gpus_for(self, kube: KubernetesOptions, tensor_parallel: int) -> int:
        """The manifest's ``gpus``, else the chart's (at least one per tensor-parallel shard,
        on a GPU pod), else none."""
        if _set(kube, "gpus") or not self.gpus:
            return kube.gpus
        return max(self.gpus, tensor_parallel)

    def gpu_memory_utilization_for(self, kube: KubernetesOptions, serve: ServeOptions) -> float:
        """The manifest's ``kubernetes`` or ``serve`` setting, else the chart's, else serve's
        default."""
        if kube.gpu_memory_utilization is not None:
            return kube.gpu_memory_utilization
        chart = self.gpu_memory_utilization
        if "gpu_memory_utilization" in serve.model_fields_set or chart is None:
            return serve.gpu_memory_utilization
        return chart


class QuantizerPods(PodDefaults):
    """The chart's ``quantizer`` values: the quantization (and source) Jobs' pods."""

    active_deadline_seconds: int | None = Field(None, ge=1)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)

    def gpus_for(self, kube: KubernetesOptions) -> int:
        """One GPU for a GPU model (the worker uses one device), or the chart's count where
        the manifest says nothing."""
        if _set(kube, "gpus") or self.gpus is None:
            return 1 if kube.gpus else 0
        return self.gpus


class LauncherConfig(_Values):
    vllm: VllmPods = VllmPods()
    quantizer: QuantizerPods = QuantizerPods()
    image_pull_secrets: tuple[V1LocalObjectReference, ...] = ()

    @classmethod
    def read(cls, path: Path) -> LauncherConfig:
        """Raises ValueError naming the file and each bad field."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the launcher config: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{path}: {problems}") from None
