"""Where and how big a model's pods are when Quantgate runs on Kubernetes."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    model_validator,
)

from serving.manifest.base import Strict, field_errors

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, examples=["500m", "4", "16Gi"])]
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LabelKey = Annotated[
    str, Field(pattern=rf"^({_DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$")
]
LabelValue = Annotated[
    str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)
]


class Toleration(Strict):
    """A Kubernetes toleration, in the manifest's snake case."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _check_operator(self) -> Self:
        if self.operator == "Exists" and self.value:
            raise field_errors(
                "Toleration", [(("value",), "operator 'Exists' takes no value", self.value)]
            )
        if self.key is None and self.operator != "Exists":
            why = "a toleration without a key needs operator 'Exists'"
            raise field_errors("Toleration", [(("operator",), why, self.operator)])
        return self


class ResourceAmounts(Strict):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(Strict):
    """CPU and memory of each pod: vLLM and quantization Jobs (GPUs: ``kubernetes.gpus``)."""

    requests: ResourceAmounts = ResourceAmounts()
    limits: ResourceAmounts = ResourceAmounts()


class Autoscaling(Strict):
    """vLLM pods scaled on their own queue by KEDA (Kubernetes, dynamic mode): a ScaledObject
    on ``vllm:num_requests_waiting`` per variant. Stopping an idle variant still scales it to 0
    (the ScaledObject is paused there); its next request resumes it."""

    min_replicas: int = Field(1, ge=1, description="pods while the variant is running")
    max_replicas: int = Field(ge=1, description="pods at most")
    waiting_per_replica: float = Field(
        4.0, gt=0, description="queued requests per pod that add one (KEDA's threshold)"
    )

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        if self.max_replicas < self.min_replicas:
            why = f"is below min_replicas ({self.min_replicas})"
            raise field_errors("Autoscaling", [(("max_replicas",), why, self.max_replicas)])
        return self


class KubernetesOptions(Strict):
    """How the model's pods are placed and sized when Quantgate runs on Kubernetes."""

    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per vLLM pod; 0: a CPU pod")
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    resources: Resources = Resources()
    tensor_parallel_size: int | None = Field(None, ge=1, description="default 1; or under serve")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vLLM --gpu-memory-utilization; unset: serve's if set there, else the "
        "chart's vllm.gpuMemoryUtilization, else serve's default",
    )
    autoscaling: Autoscaling | None = None
