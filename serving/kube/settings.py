"""Process settings of the Kubernetes launcher (``QUANTGATE_*``; the Helm chart sets them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    job_ttl_s: int = Field(3600, ge=0, description="Finished Jobs are removed after this.")
    job_deadline_s: int = Field(6 * 3600, ge=1, description="A Job running longer fails.")
