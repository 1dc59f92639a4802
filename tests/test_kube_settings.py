"""The launcher's settings come from the environment names the Helm chart sets."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_the_charts_launcher_config_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "launcher.yaml"
    path.write_text(
        "vllm: {gpus: 2, nodeSelector: {pool: gpu}, shmSize: 8Gi}\n"
        "quantizer: {activeDeadlineSeconds: 7200, ttlSecondsAfterFinished: 86400}\n"
        "imagePullSecrets: [{name: creds}]\n"
    )
    monkeypatch.setenv("QUANTGATE_LAUNCHER_CONFIG", str(path))
    settings = KubernetesSettings()
    assert settings.pods.vllm.gpus == 2 and settings.pods.vllm.node_selector == {"pool": "gpu"}
    assert [s.name for s in settings.pods.image_pull_secrets] == ["creds"]
    assert (settings.job_deadline_s, settings.job_ttl_s) == (7200, 86400)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("vllm: {gpu: 1}\n", "vllm.gpu: Extra inputs are not permitted"),
        ("quantizer: {tolerations: [{key: a, operatr: Exists}]}\n", "quantizer.tolerations.0"),
        ("vllm: {gpus: [1\n", "cannot read the launcher config"),
    ],
)
def test_a_bad_launcher_config_names_the_file_and_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "launcher.yaml"
    path.write_text(text)
    monkeypatch.setenv("QUANTGATE_LAUNCHER_CONFIG", str(path))
    with pytest.raises(ValidationError, match=rf"{path}: .*{re.escape(where)}"):
        KubernetesSettings()
