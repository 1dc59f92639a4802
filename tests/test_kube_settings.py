"""The launcher's settings come from the environment names the Helm chart sets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.kube.settings import KubernetesSettings
from serving.settings import ServingSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LAUNCHER", "NAMESPACE", "VLLM_IMAGE", "QUANTIZER_IMAGE", "CACHE_PVC"):
        monkeypatch.delenv(f"QUANTGATE_{name}", raising=False)
    assert ServingSettings().launcher == "local"
    settings = KubernetesSettings()
    assert settings.namespace == "default"
    assert settings.cache_pvc == "quantgate-cache"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_LAUNCHER", "kubernetes")
    monkeypatch.setenv("QUANTGATE_NAMESPACE", "llm")
    monkeypatch.setenv("QUANTGATE_VLLM_IMAGE", "vllm/vllm-openai:v0.11.0")
    monkeypatch.setenv("QUANTGATE_QUANTIZER_IMAGE", "registry.local/quantizer:1")
    monkeypatch.setenv("QUANTGATE_CACHE_PVC", "models")
    assert ServingSettings().launcher == "kubernetes"
    settings = KubernetesSettings()
    assert (settings.namespace, settings.cache_pvc) == ("llm", "models")
    assert settings.vllm_image == "vllm/vllm-openai:v0.11.0"
    assert settings.quantizer_image == "registry.local/quantizer:1"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_LAUNCHER", "docker")
    with pytest.raises(ValidationError):
        ServingSettings()
    monkeypatch.setenv("QUANTGATE_NAMESPACE", "Not_A_Namespace")
    with pytest.raises(ValidationError):
        KubernetesSettings()
