"""The manifest's ``kubernetes`` block: placement, sizing and tensor parallelism."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import manifest_errors
from serving.manifest import Manifest, parse_manifest

BASE = """\
version: 1
cache_dir: /tmp/cache
models:
  tiny:
    source: /models/tiny
    default_variant: base
    variants:
      base: {method: none}
"""

GPU = (
    BASE
    + """\
    kubernetes:
      gpus: 2
      tensor_parallel_size: 2
      gpu_memory_utilization: 0.85
      node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3, pool: gpu}
      tolerations:
        - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
        - {key: dedicated, value: llm}
      resources:
        requests: {cpu: "4", memory: 32Gi}
        limits: {memory: 64Gi}
"""
)


def _errors(text: str) -> list[str]:
    return manifest_errors(text, Path("/m/k.yaml"))


def _parse(text: str) -> Manifest:
    return parse_manifest(text, Path("/m/k.yaml"))


def test_the_block_is_optional_and_means_one_cpu_pod() -> None:
    model = _parse(BASE).models["tiny"]
    assert model.kubernetes.gpus == 0
    assert model.kubernetes.node_selector == {}
    assert model.kubernetes.tolerations == ()
    assert model.kubernetes.gpu_memory_utilization is None
    assert model.tensor_parallel_size == 1


def test_a_full_block_is_read() -> None:
    kube = _parse(GPU).models["tiny"].kubernetes
    assert kube.gpus == 2
    assert kube.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert [(t.key, t.operator, t.value, t.effect) for t in kube.tolerations] == [
        ("nvidia.com/gpu", "Exists", None, "NoSchedule"),
        ("dedicated", "Equal", "llm", None),
    ]
    assert kube.resources.requests.cpu == "4"
    assert kube.resources.limits.memory == "64Gi"
    assert kube.gpu_memory_utilization == 0.85
    assert _parse(GPU).models["tiny"].tensor_parallel_size == 2


def test_tensor_parallel_size_may_live_under_serve() -> None:
    text = BASE + "    serve: {tensor_parallel_size: 4}\n    kubernetes: {gpus: 4}\n"
    assert _parse(text).models["tiny"].tensor_parallel_size == 4


def test_tensor_parallel_size_set_twice_must_agree() -> None:
    text = GPU + "    serve: {tensor_parallel_size: 4}\n"
    assert _errors(text) == [
        "/m/k.yaml:11: models.tiny.kubernetes.tensor_parallel_size: tensor_parallel_size is 4 "
        "under serve and 2 under kubernetes; set it once"
    ]


def test_tensor_parallel_size_needs_as_many_gpus() -> None:
    assert _errors(GPU.replace("gpus: 2", "gpus: 1")) == [
        "/m/k.yaml:10: models.tiny.kubernetes.gpus: tensor_parallel_size 2 needs at least 2 gpus, "
        "not 1"
    ]


def test_unknown_key_names_file_line_and_field() -> None:
    errors = _errors(GPU.replace("      gpus: 2\n", "      gpus: 2\n      gpu: 2\n"))
    assert errors == ["/m/k.yaml:11: models.tiny.kubernetes.gpu: Extra inputs are not permitted"]


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("gpus: 2", "gpus: -1", "models.tiny.kubernetes.gpus"),
        ("0.85", "1.5", "models.tiny.kubernetes.gpu_memory_utilization"),
        ("memory: 32Gi", "memory: 32 GB", "models.tiny.kubernetes.resources.requests.memory"),
        ("pool: gpu", "pool: -gpu", "models.tiny.kubernetes.node_selector.pool"),
        ("operator: Exists", "operator: Maybe", "models.tiny.kubernetes.tolerations.0.operator"),
        ("effect: NoSchedule", "effect: Never", "models.tiny.kubernetes.tolerations.0.effect"),
    ],
)
def test_bad_values_are_named(old: str, new: str, field: str) -> None:
    errors = _errors(GPU.replace(old, new))
    assert any(f": {field}:" in e for e in errors), errors


def test_toleration_rules() -> None:
    errors = _errors(GPU.replace("operator: Exists,", "operator: Exists, value: x,"))
    assert any(".tolerations.0.value: operator 'Exists' takes no value" in e for e in errors), (
        errors
    )
    errors = _errors(GPU.replace("{key: dedicated, value: llm}", "{value: llm}"))
    assert any(
        ".tolerations.1.operator: a toleration without a key needs operator 'Exists'" in e
        for e in errors
    ), errors
