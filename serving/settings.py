"""Process settings for the serving side: which interpreters run vLLM and the quantizer.

``launcher`` picks where vLLM and quantization jobs run: ``local`` (child processes, below),
``kubernetes`` (Deployments and Jobs the gateway creates; ``serving.kube.KubernetesSettings``
holds the rest) or ``kubernetes-static`` (the Helm chart's own vLLM backends, found by their
labels; nothing is created and no job runs: ``serving.kube.static``).

vLLM and llm-compressor pin different ``compressed-tensors`` releases, so each lives in its own
environment and runs as its own process. By default the environments are the ones
``make install`` creates beside the source tree (``.venv-vllm``, ``.venv-quant``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.errors import SettingsError

SOURCE_ROOT = Path(__file__).resolve().parent.parent


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    vllm_python: Path = SOURCE_ROOT / ".venv-vllm" / "bin" / "python"
    quantizer_python: Path = SOURCE_ROOT / ".venv-quant" / "bin" / "python"
    # Appended to the quantization worker's PYTHONPATH: for a quantizer whose packages live
    # outside its interpreter's own site (e.g. unpacked into a folder on a GPU test machine).
    quantizer_pythonpath: str | None = None
    max_concurrent_jobs: int = 1
    vllm_host: str = "127.0.0.1"
    launcher: Literal["local", "kubernetes", "kubernetes-static"] = "local"


Settings = TypeVar("Settings", bound=BaseSettings)


def read_settings(kind: type[Settings]) -> Settings:
    """``kind`` read from the environment; SettingsError naming each variable whose value
    its setting cannot take (the value itself is not repeated: it may be a secret)."""
    try:
        return kind()
    except ValidationError as exc:
        prefix = str(kind.model_config.get("env_prefix") or "")
        problems = [
            f"{(prefix + '_'.join(str(part) for part in error['loc'])).upper()}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SettingsError("; ".join(problems)) from None
