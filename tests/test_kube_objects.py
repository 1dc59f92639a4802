"""The Kubernetes objects of a variant and of a quantization job, checked against the schemas."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.aio.client import ApiClient

from serving.errors import BackendFailed, JobFailed
from serving.hardware import Gpu, Hardware
from serving.kernels import choose, planned_scheme
from serving.kube import names, objects
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload, VariantWorkload, quantization_spec
from serving.manifest import Manifest, parse_manifest
from serving.placement import Placement
from serving.specs import CUDA_ENV, LaunchPlanner
from serving.store import VariantStore
from serving.tuner import pinned

K8S_VERSIONS = ["1.30.0", "1.37.0"]
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035: also a DNS-1123 label
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
JOB_ID = "20261125-191924-ab12cd34"

MANIFEST = """\
version: 1
cache_dir: /srv/cache
models:
  tiny_v1.5:
    source: /srv/cache/models/tiny
    default_variant: gptq
    serve: {max_model_len: 1024, cpu_kv_cache_gib: 2}
    kubernetes:
      resources: {requests: {cpu: "2", memory: 4Gi}, limits: {memory: 8Gi}}
    variants:
      base: {method: none}
      gptq: {method: gptq, bits: 4, calibration: {dataset: /srv/cache/data/calib.txt}}
  one-gpu:
    source: /srv/cache/models/llama
    default_variant: awq
    kubernetes:
      gpus: 1
      gpu_memory_utilization: 0.8
      node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    variants:
      awq: {method: awq, bits: 4}
      q4km: {method: gguf}
  two-gpus:
    source: /srv/cache/models/llama
    default_variant: base
    serve: {tensor_parallel_size: 2, enforce_eager: true, extra_args: [--seed, "7"]}
    kubernetes: {gpus: 2}
    variants:
      base: {method: none}
"""

SETTINGS = KubernetesSettings(
    namespace="llm",
    vllm_image="vllm/vllm-openai:v0.11.0",
    quantizer_image="registry.local/quantgate-quantizer:0.1.0",
    cache_pvc="quantgate-cache",
)
VOLUME = CacheVolume("quantgate-cache", Path("/srv/cache"))


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return parse_manifest(MANIFEST, Path("/m/kube.yaml"))


def workload(manifest: Manifest, model: str, variant: str) -> VariantWorkload:
    spec = manifest.models[model]
    folder = (
        spec.source_path
        if not spec.variants[variant].quantized
        else VariantStore(Path("/srv/cache")).variant_dir(model, spec.variants[variant])
    )
    quantization = "compressed-tensors" if spec.variants[variant].quantized else None
    return VariantWorkload.of(model, spec, variant, folder, VOLUME, quantization)


def job(
    manifest: Manifest, model: str = "tiny_v1.5", variant: str = "gptq"
) -> QuantizationWorkload:
    spec_file = Path("/srv/cache/.jobs", JOB_ID, "spec.json")
    return QuantizationWorkload.of(
        JOB_ID, model, manifest.models[model], variant, spec_file, VOLUME
    )


def wire(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return data


def validate(obj: Any) -> dict[str, Any]:
    data = wire(obj)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(data, version, strict=True)
    return data


CASES = [("tiny_v1.5", "gptq"), ("tiny_v1.5", "base"), ("one-gpu", "awq"), ("two-gpus", "base")]


@pytest.mark.parametrize(("model", "variant"), CASES)
def test_variant_objects_pass_the_schemas(manifest: Manifest, model: str, variant: str) -> None:
    w = workload(manifest, model, variant)
    validate(objects.deployment(w, SETTINGS))
    validate(objects.deployment(w, SETTINGS, replicas=0))
    validate(objects.service(w, SETTINGS))


def test_job_passes_the_schemas(manifest: Manifest) -> None:
    validate(objects.quantization_job(job(manifest), SETTINGS))
    validate(objects.quantization_job(job(manifest, "one-gpu", "awq"), SETTINGS))


def test_the_validator_is_not_a_no_op(manifest: Manifest) -> None:
    data = wire(objects.deployment(workload(manifest, "one-gpu", "awq"), SETTINGS))
    data["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, "1.30.0", strict=True)
    data = wire(objects.quantization_job(job(manifest), SETTINGS))
    data["spec"]["backofLimit"] = data["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, "1.30.0", strict=True)


def _pod(data: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = data["spec"]["template"]["spec"]
    return pod


def test_cpu_variant(manifest: Manifest) -> None:
    data = validate(objects.deployment(workload(manifest, "tiny_v1.5", "gptq"), SETTINGS))
    assert data["metadata"]["namespace"] == "llm"
    pod = _pod(data)
    (vllm,) = pod["containers"]
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"
    assert vllm["command"] == ["vllm", "serve"]
    h = manifest.models["tiny_v1.5"].variants["gptq"].recipe_hash()
    assert vllm["args"] == [
        f"/var/cache/quantgate/tiny_v1.5/gptq-{h}",
        "--served-model-name", "tiny_v1.5:gptq", "tiny_v1.5",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--max-model-len", "1024",
        "--dtype", "bfloat16",
        "--tensor-parallel-size", "1",
        "--disable-uvicorn-access-log",
        "--quantization", "compressed-tensors",
    ]  # fmt: skip
    assert vllm["env"] == [
        {"name": "VLLM_CACHE_ROOT", "value": "/var/cache/vllm-compile"},
        {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"},
    ]
    assert vllm["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    compile_cache = vllm["volumeMounts"][1]
    assert vllm["volumeMounts"] == [
        {"name": "cache", "mountPath": "/var/cache/quantgate", "readOnly": True},
        {"name": "cache", "mountPath": "/var/cache/vllm-compile", "readOnly": False,
         "subPath": compile_cache["subPath"]},
    ]  # fmt: skip
    assert compile_cache["subPath"].startswith(".vllm-cache/")  # one per shape and method
    assert pod["volumes"] == [
        {"name": "cache", "persistentVolumeClaim": {"claimName": "quantgate-cache"}}
    ]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert data["spec"]["strategy"] == {"type": "Recreate"}


def test_a_gguf_variant_serves_its_file_with_the_folder_as_tokenizer(manifest: Manifest) -> None:
    spec = manifest.models["one-gpu"]
    folder = VariantStore(Path("/srv/cache")).variant_dir("one-gpu", spec.variants["q4km"])
    w = VariantWorkload.of("one-gpu", spec, "q4km", folder, VOLUME)
    (vllm,) = _pod(validate(objects.deployment(w, SETTINGS)))["containers"]
    path = f"/var/cache/quantgate/one-gpu/{folder.name}"
    assert vllm["args"][:4] == [f"{path}/model.gguf", "--tokenizer", path, "--served-model-name"]
    assert "--quantization" not in vllm["args"]  # vllm-gguf-plugin sets it for a .gguf model


def test_one_gpu_variant(manifest: Manifest) -> None:
    pod = _pod(validate(objects.deployment(workload(manifest, "one-gpu", "awq"), SETTINGS)))
    (vllm,) = pod["containers"]
    assert vllm["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    args = vllm["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.8"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert vllm["env"] == [
        {"name": "VLLM_CACHE_ROOT", "value": "/var/cache/vllm-compile"}
    ]  # no CPU KV cache size, no NCCL for one GPU
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert [v["name"] for v in pod["volumes"]] == ["cache"]


def test_tensor_parallel_variant(manifest: Manifest) -> None:
    pod = _pod(validate(objects.deployment(workload(manifest, "two-gpus", "base"), SETTINGS)))
    (vllm,) = pod["containers"]
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    args = vllm["args"]
    assert args[0] == "/var/cache/quantgate/models/llama"  # a base model served from its source
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--quantization" not in args
    assert args[-3:] == ["--enforce-eager", "--seed", "7"]
    assert vllm["env"] == [
        {"name": "VLLM_CACHE_ROOT", "value": "/var/cache/vllm-compile"},
        {"name": "NCCL_NVLS_ENABLE", "value": "0"},
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


PINNED = """\
cache_dir: /srv/cache
models:
  llama:
    source: /srv/cache/models/llama
    default_variant: gptq
    serve:
      kernel: MarlinLinearKernel
      env: {VLLM_LOGGING_LEVEL: DEBUG}
      gpu_memory_utilization: 0.75
    kubernetes: {gpus: 1}
    variants:
      gptq: {method: gptq, bits: 4}
"""


def test_a_pod_gets_the_environment_and_gpu_share_a_local_vllm_would() -> None:
    """serve.env, the kernel pin and the CUDA settings reach vLLM in its pod; which GPUs it
    sees is the scheduler's business, and its compile cache is the volume's."""
    manifest = parse_manifest(PINNED, Path("/m/kube.yaml"))
    model = manifest.models["llama"]
    h100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100", 90, 0),))
    store = VariantStore(Path("/srv/cache"))
    planner = LaunchPlanner(manifest, store, h100, Placement(h100), "0.0.0.0", False)
    kernel = pinned(choose(planned_scheme(model.variants["gptq"]), h100), "MarlinLinearKernel")
    spec = planner.replica("llama", "gptq", 0, kernel)
    w = VariantWorkload.of(
        "llama", model, "gptq", spec.model_dir, VOLUME, spec.quantization, spec.env
    )
    (vllm,) = _pod(validate(objects.deployment(w, SETTINGS)))["containers"]
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["VLLM_DISABLED_KERNELS"] == "MacheteLinearKernel"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert CUDA_ENV.items() <= env.items()
    assert env["VLLM_CACHE_ROOT"] == "/var/cache/vllm-compile"
    assert "CUDA_VISIBLE_DEVICES" not in env
    args = vllm["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.75"  # serve's


CHART_PODS = {  # as the chart renders launcher.yaml
    "vllm": {
        "gpus": 1,
        "gpuResourceName": "nvidia.com/gpu",
        "gpuMemoryUtilization": 0.85,
        "extraArgs": ["--enable-prefix-caching"],
        "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                {"name": "VLLM_CACHE_ROOT", "value": "/elsewhere"}],
        "resources": {"requests": {"cpu": 4, "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
        "nodeSelector": {"node-pool": "gpu-serving"},
        "tolerations": [{"key": "node-pool", "operator": "Equal", "value": "gpu-serving",
                         "effect": "NoSchedule"}],
        "affinity": {},
        "runtimeClassName": "nvidia",
        "priorityClassName": "",
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                               "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "shmSize": "16Gi",
        "terminationGracePeriodSeconds": 60,
    },
    "quantizer": {
        "gpus": 1,
        "nodeSelector": {"node-pool": "gpu-batch"},
        "tolerations": [],
        "priorityClassName": "batch-low",
        "podSecurityContext": {"runAsNonRoot": True},
        "securityContext": {"readOnlyRootFilesystem": False},
        "activeDeadlineSeconds": 10800,
        "ttlSecondsAfterFinished": 600,
    },
    "imagePullSecrets": [{"name": "registry-creds"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def chart_settings(tmp_path_factory: pytest.TempPathFactory) -> KubernetesSettings:
    path = tmp_path_factory.mktemp("chart") / "launcher.yaml"
    path.write_text(yaml.safe_dump(CHART_PODS))
    return KubernetesSettings(namespace="llm", vllm_image=SETTINGS.vllm_image, launcher_config=path)


def test_the_charts_pod_settings_reach_pods_the_manifest_says_nothing_of(
    manifest: Manifest, chart_settings: KubernetesSettings
) -> None:
    dep = validate(objects.deployment(workload(manifest, "tiny_v1.5", "gptq"), chart_settings))
    pod = _pod(dep)
    (vllm,) = pod["containers"]
    assert vllm["resources"] == {  # the manifest's cpu and memory, the chart's GPUs
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"node-pool": "gpu-serving"}
    assert pod["tolerations"] == [
        {"key": "node-pool", "operator": "Equal", "value": "gpu-serving", "effect": "NoSchedule"}
    ]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert vllm["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["runtimeClassName"] == "nvidia" and pod["terminationGracePeriodSeconds"] == 60
    assert "priorityClassName" not in pod and "affinity" not in pod  # "" and {}: not set
    args = vllm["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    assert args[-1] == "--enable-prefix-caching"
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["VLLM_LOGGING_LEVEL"] == "INFO"
    assert env["VLLM_CACHE_ROOT"] == "/var/cache/vllm-compile"  # Quantgate's own wins
    assert "VLLM_CPU_KVCACHE_SPACE" not in env  # a GPU pod now


def test_the_manifest_wins_where_it_sets_a_field(
    manifest: Manifest, chart_settings: KubernetesSettings
) -> None:
    pod = _pod(validate(objects.deployment(workload(manifest, "one-gpu", "awq"), chart_settings)))
    (vllm,) = pod["containers"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert vllm["resources"] == {  # no resources in the manifest: the chart's
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"},
    }
    args = vllm["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.8"  # kubernetes'
    pod = _pod(validate(objects.deployment(workload(manifest, "two-gpus", "base"), chart_settings)))
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    pinned = parse_manifest(PINNED, Path("/m/kube.yaml"))  # serve.gpu_memory_utilization 0.75
    w = VariantWorkload.of("llama", pinned.models["llama"], "gptq",
                           Path("/srv/cache/llama/gptq-x"), VOLUME)  # fmt: skip
    args = _pod(validate(objects.deployment(w, chart_settings)))["containers"][0]["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.75"


def test_jobs_get_the_charts_quantizer_settings(
    manifest: Manifest, chart_settings: KubernetesSettings
) -> None:
    data = validate(objects.quantization_job(job(manifest), chart_settings))
    assert data["spec"]["activeDeadlineSeconds"] == 10800
    assert data["spec"]["ttlSecondsAfterFinished"] == 600
    pod = data["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the manifest sets no gpus
    assert pod["nodeSelector"] == {"node-pool": "gpu-batch"}
    assert "tolerations" not in pod
    assert pod["priorityClassName"] == "batch-low"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["securityContext"] == {"runAsNonRoot": True}
    assert worker["securityContext"] == {"readOnlyRootFilesystem": False}
    gpu = validate(objects.quantization_job(job(manifest, "one-gpu", "awq"), chart_settings))
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


@pytest.mark.parametrize("startup_timeout_s", [600, 1800, 45.5])
def test_the_rollout_deadline_outlasts_the_startup_probe(startup_timeout_s: float) -> None:
    """A 70B model may take serve.startup_timeout_s to load: the Deployment controller must
    not declare its rollout stuck (ProgressDeadlineExceeded, a failed start) before that."""
    timeout = f"startup_timeout_s: {startup_timeout_s}, "
    text = MANIFEST.replace(
        "serve: {max_model_len: 1024,", "serve: {" + timeout + "max_model_len: 1024,"
    )
    w = workload(parse_manifest(text, Path("/m/kube.yaml")), "tiny_v1.5", "gptq")
    spec = validate(objects.deployment(w, SETTINGS))["spec"]
    probe = spec["template"]["spec"]["containers"][0]["startupProbe"]
    allowed_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert allowed_s >= startup_timeout_s
    assert spec["progressDeadlineSeconds"] >= allowed_s + 300  # and time to pull the image


def test_service_selects_the_deployments_pods(manifest: Manifest) -> None:
    w = workload(manifest, "tiny_v1.5", "gptq")
    dep = validate(objects.deployment(w, SETTINGS))
    svc = validate(objects.service(w, SETTINGS))
    assert svc["metadata"]["name"] == dep["metadata"]["name"] == w.name
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["spec"]["type"] == "ClusterIP"


def test_labels_and_exact_names(manifest: Manifest) -> None:
    w = workload(manifest, "tiny_v1.5", "gptq")
    dep = validate(objects.deployment(w, SETTINGS))
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "quantgate"
    assert labels["app.kubernetes.io/name"] == "quantgate-vllm"
    assert labels["quantgate.io/model"] == "tiny_v1.5"
    assert labels["quantgate.io/variant"] == "gptq"
    assert labels["quantgate.io/recipe-hash"] == w.recipe_hash
    assert dep["metadata"]["annotations"] == {
        "quantgate.io/model": "tiny_v1.5",
        "quantgate.io/variant": "gptq",
    }
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values())


def test_job(manifest: Manifest) -> None:
    data = validate(objects.quantization_job(job(manifest), SETTINGS))
    spec = data["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == SETTINGS.job_ttl_s
    assert spec["activeDeadlineSeconds"] == SETTINGS.job_deadline_s
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.local/quantgate-quantizer:0.1.0"
    assert worker["command"] == [
        "python", "-m", "serving.worker.quantize",
        f"/var/cache/quantgate/.jobs/{JOB_ID}/spec.json",
    ]  # fmt: skip
    assert worker["volumeMounts"] == [
        {"name": "cache", "mountPath": "/var/cache/quantgate", "readOnly": False}
    ]
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})
    labels = data["metadata"]["labels"]
    assert labels["quantgate.io/job-id"] == JOB_ID
    assert labels["app.kubernetes.io/managed-by"] == "quantgate"


def test_gpu_job_asks_for_one_gpu(manifest: Manifest) -> None:
    data = validate(objects.quantization_job(job(manifest, "one-gpu", "awq"), SETTINGS))
    pod = data["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("model", "variant"),
    [
        ("tiny_v1.5", "gptq"),
        ("a" * 63, "b" * 63),
        ("a-b", "c"),
        ("a", "b-c"),
        ("tiny.v2", "x"),
        ("tiny-v2", "x"),
        ("9lives", "w4_a16."),
    ],
)
def test_names_are_dns_labels(model: str, variant: str) -> None:
    name = names.variant_name(model, variant)
    assert DNS_LABEL.match(name) and len(name) <= 63, name
    assert names.variant_name(model, variant) == name  # stable
    job_name = names.job_name(JOB_ID)
    assert DNS_LABEL.match(job_name) and len(job_name) <= 63
    for value in names.variant_labels(model, variant, "0e0ab15eae89").values():
        assert LABEL_VALUE.match(value) and len(value) <= 63, value


def test_names_do_not_collide() -> None:
    pairs = [("a-b", "c"), ("a", "b-c"), ("tiny.v2", "x"), ("tiny-v2", "x"), ("tiny_v2", "x")]
    assert len({names.variant_name(m, v) for m, v in pairs}) == len(pairs)


def test_paths_outside_the_cache_are_refused(manifest: Manifest) -> None:
    spec = manifest.models["tiny_v1.5"]
    with pytest.raises(BackendFailed, match="outside the cache /srv/cache"):
        VariantWorkload.of("tiny_v1.5", spec, "base", Path("/models/tiny"), VOLUME)
    with pytest.raises(JobFailed, match="outside the cache"):
        QuantizationWorkload.of(JOB_ID, "tiny_v1.5", spec, "gptq", Path("/tmp/spec.json"), VOLUME)


def test_quantization_spec_uses_the_pods_paths(manifest: Manifest) -> None:
    variant = manifest.models["tiny_v1.5"].variants["gptq"]
    spec = quantization_spec(
        VOLUME,
        Path("/srv/cache/models/tiny"),
        Path("/srv/cache/tiny_v1.5/.staging/gptq-x"),
        variant.recipe(),
    )
    assert spec["source"] == "/var/cache/quantgate/models/tiny"
    assert spec["output"] == "/var/cache/quantgate/tiny_v1.5/.staging/gptq-x"
    assert spec["recipe"]["calibration"]["dataset"] == "/var/cache/quantgate/data/calib.txt"
    assert spec["recipe"]["bits"] == 4
    assert VOLUME.path(Path("/srv/cache/a/b")) == PurePosixPath("/var/cache/quantgate/a/b")
    with pytest.raises(JobFailed, match="outside the cache"):
        quantization_spec(VOLUME, Path("/models/tiny"), Path("/srv/cache/o"), variant.recipe())
