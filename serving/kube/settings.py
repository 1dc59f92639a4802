"""Process settings of the Kubernetes launcher (``QUANTGATE_*``; the Helm chart sets them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.hardware import Gpu, Hardware
from serving.kube.pod_defaults import LauncherConfig


class KubernetesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    namespace: str = Field(
        "default",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Where the Deployments, Services and Jobs go.",
    )
    vllm_image: str = Field(
        "vllm/vllm-openai:latest",
        description="vLLM's OpenAI server image (a CUDA image; CPU variants need a CPU build).",
    )
    quantizer_image: str = Field(
        "quantgate-quantizer:latest",
        description="An image with llm-compressor and `serving.worker` on its Python path.",
    )
    cache_pvc: str = Field(
        "quantgate-cache",
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="The claim holding the cache: variants, job specs and logs (ReadWriteMany "
        "when the gateway, vLLM and jobs may land on different nodes).",
    )
    hub_token_secret: str | None = Field(
        None,
        description="A Secret whose key `token` is a Hugging Face token: given to the Jobs that "
        "download hf:// sources, as the variable the manifest's source_token_env names.",
    )
    prometheus_url: str | None = Field(
        None,
        description="The Prometheus that scrapes the vLLM pods (the chart's PodMonitor): what "
        "KEDA asks for a variant's queue when the manifest autoscales it.",
    )
    job_ttl_s: int = Field(
        3600,
        ge=0,
        description="Finished Jobs are removed after this; launcher_config's "
        "quantizer.ttlSecondsAfterFinished wins.",
    )
    job_deadline_s: int = Field(
        6 * 3600,
        ge=1,
        description="A Job running longer fails; launcher_config's "
        "quantizer.activeDeadlineSeconds wins.",
    )
    launcher_config: Path | None = Field(
        None,
        description="The chart's launcher.yaml: its vllm and quantizer values, defaults under "
        "each model's kubernetes block, and imagePullSecrets (serving.kube.pod_defaults).",
    )
    pods: LauncherConfig = Field(
        default_factory=LauncherConfig, description="What launcher_config holds, once read."
    )

    device: Literal["cpu", "cuda"] = Field(
        "cuda", description="What the vLLM pods run on: decides the kernels (QUANTGATE_DEVICE)."
    )
    gpu_name: str = Field("NVIDIA H100", description="The GPU the vLLM pods get, for kernels")
    gpu_capability: int = Field(90, ge=0, description="Its compute capability x 10 (9.0 -> 90)")

    @model_validator(mode="after")
    def _read_launcher_config(self) -> Self:
        if self.launcher_config is None:
            return self
        self.pods = LauncherConfig.read(self.launcher_config)
        jobs = self.pods.quantizer
        if jobs.active_deadline_seconds is not None:
            self.job_deadline_s = jobs.active_deadline_seconds
        if jobs.ttl_seconds_after_finished is not None:
            self.job_ttl_s = jobs.ttl_seconds_after_finished
        return self

    def hardware(self) -> Hardware:
        """The hardware the pods run on, as configured: the gateway's own pod has no GPU."""
        if self.device == "cpu":
            return Hardware("cpu", Hardware.detect().cpu_flags)
        return Hardware("cuda", gpus=(Gpu(0, self.gpu_name, self.gpu_capability, 0),))
