"""Dynamic mode's pods as the chart shapes them: the gateway reads the chart's launcher.yaml,
and the Deployments and Jobs it creates carry the chart's values where the manifest is silent.

Needs helm, as tests/test_chart.py does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio.client import ApiClient
from test_chart import NAMESPACE, container, env_of, example, manifest_config, one, render

from serving.kube import objects
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload, VariantWorkload
from serving.manifest import Manifest, parse_manifest
from serving.store import VariantStore

Object = dict[str, Any]


def gateway_reads(
    objects_: tuple[Object, ...], tmp_path: Path
) -> tuple[KubernetesSettings, Manifest]:
    """The launcher settings and the manifest the dynamic gateway reads, from the files its
    Deployment mounts where its environment points."""
    gateway = one(objects_, "Deployment", "gateway")
    main = container(gateway, "gateway")
    config_path = Path(env_of(main)["QUANTGATE_LAUNCHER_CONFIG"])
    (mount,) = [m for m in main["volumeMounts"] if config_path.is_relative_to(m["mountPath"])]
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    config = manifest_config(objects_)
    assert volumes[mount["name"]]["configMap"]["name"] == config["metadata"]["name"]
    mounted = tmp_path / "launcher.yaml"
    mounted.write_text(config["data"][str(config_path.relative_to(mount["mountPath"]))])
    manifest_path = Path(main["args"][1])
    assert manifest_path.parent == Path(mount["mountPath"])
    manifest = parse_manifest(config["data"][manifest_path.name], manifest_path)
    return KubernetesSettings(namespace=NAMESPACE, launcher_config=mounted), manifest


def pods(settings: KubernetesSettings, manifest: Manifest, model: str) -> tuple[Object, Object]:
    """The wire form of the pod specs of ``model``'s default variant and of its build Job."""
    spec = manifest.models[model]
    variant = spec.default_variant
    volume = CacheVolume(settings.cache_pvc, manifest.cache_dir)
    folder = VariantStore(manifest.cache_dir).variant_dir(model, spec.variants[variant])
    w = VariantWorkload.of(model, spec, variant, folder, volume, "compressed-tensors")
    job_spec = manifest.cache_dir / ".jobs" / "j1" / "spec.json"
    q = QuantizationWorkload.of("j1", model, spec, variant, job_spec, volume)
    api = ApiClient()
    wire: list[Object] = [
        api.sanitize_for_serialization(o)  # type: ignore[no-untyped-call]
        for o in (objects.deployment(w, settings), objects.quantization_job(q, settings))
    ]
    return wire[0], wire[1]


def test_the_dynamic_examples_pods_get_the_charts_gpus_placement_and_security(
    tmp_path: Path,
) -> None:
    settings, manifest = gateway_reads(render(example("dynamic")), tmp_path)
    deployment, job = pods(settings, manifest, "qwen2.5-7b")
    pod = deployment["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"node-pool": "gpu-serving"}
    assert {"key": "node-pool", "operator": "Equal", "value": "gpu-serving",
            "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip
    assert pod["securityContext"]["runAsUser"] == 10001
    assert vllm["securityContext"]["allowPrivilegeEscalation"] is False
    assert job["spec"]["activeDeadlineSeconds"] == 10800
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"node-pool": "gpu-batch"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_cpu_demos_pods_run_on_cpus(tmp_path: Path) -> None:
    settings, manifest = gateway_reads(render(example("cpu-demo")), tmp_path)
    deployment, job = pods(settings, manifest, "tiny")
    (vllm,) = deployment["spec"]["template"]["spec"]["containers"]
    assert vllm["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"},
                                 "limits": {"memory": "4Gi"}}  # fmt: skip
    assert {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"} in vllm["env"]
    assert "tolerations" not in deployment["spec"]["template"]["spec"]
    assert (
        "nvidia.com/gpu"
        not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_pull_secrets_reach_the_pods_and_a_changed_config_rolls_the_gateway(
    tmp_path: Path,
) -> None:
    extra = tmp_path / "values.yaml"
    extra.write_text(yaml.safe_dump({"imagePullSecrets": [{"name": "registry-creds"}]}))
    rendered = render(example("dynamic"), extra)
    settings, manifest = gateway_reads(rendered, tmp_path)
    for obj in pods(settings, manifest, "mistral-7b"):
        assert obj["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]

    def checksum(objects_: tuple[Object, ...]) -> str:
        notes = one(objects_, "Deployment", "gateway")["spec"]["template"]["metadata"]
        found: str = notes["annotations"]["checksum/launcher"]
        return found

    assert checksum(rendered) != checksum(render(example("dynamic")))


def test_pod_labels_annotations_and_pull_policy_reach_the_pods_the_gateway_makes(
    tmp_path: Path,
) -> None:
    """The chart's podLabels, podAnnotations and image.pullPolicy reach dynamic mode's pods and
    the demo model's Job; a label the chart shares with Quantgate's own keeps Quantgate's, so
    the Deployment still selects its pods."""
    extra = tmp_path / "values.yaml"
    clash = "app.kubernetes.io/instance"
    extra.write_text(yaml.safe_dump({
        "vllm": {"image": {"pullPolicy": "Always"},
                 "podLabels": {"team": "llm", clash: "mine"},
                 "podAnnotations": {"sidecar.istio.io/inject": "false"}},
        "quantizer": {"image": {"pullPolicy": "Never"}, "podLabels": {"team": "batch"},
                      "podAnnotations": {"karpenter.sh/do-not-disrupt": "true"}},
        "demoModel": {"enabled": True},
    }))  # fmt: skip
    rendered = render(example("dynamic"), extra)
    settings, manifest = gateway_reads(rendered, tmp_path)
    deployment, job = pods(settings, manifest, "qwen2.5-7b")
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "llm"
    assert meta["labels"][clash] != "mine"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= meta["labels"].items()
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    assert meta["annotations"]["quantgate.io/model"] == "qwen2.5-7b"  # Quantgate's own kept
    assert deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "batch"
    assert meta["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    assert job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    demo = one(rendered, "Job", "demo-model")["spec"]["template"]
    assert demo["metadata"]["labels"]["team"] == "batch"
    assert demo["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}


@pytest.mark.parametrize("name", ["single-gpu", "multi-gpu-tp"])
def test_static_mode_has_no_launcher_config(name: str) -> None:
    rendered = render(example(name))
    assert "launcher.yaml" not in manifest_config(rendered)["data"]
    env = env_of(container(one(rendered, "Deployment", "gateway"), "gateway"))
    assert "QUANTGATE_LAUNCHER_CONFIG" not in env
