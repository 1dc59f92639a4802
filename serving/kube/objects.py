"""The Kubernetes objects of a variant (Deployment, Service) and of a quantization Job.

Pure functions of a workload and the settings: no API calls, so every object can be checked
against the Kubernetes schemas offline. vLLM runs as ``vllm serve`` on the variant's folder in
the cache volume, answers ``/health`` on port 8000, and gets GPUs as ``nvidia.com/gpu``
limits. One replica per variant and GPUs are scarce, so a changed variant is replaced
(``Recreate``) rather than rolled with a surge pod that may never fit. The chart's pod
settings (``settings.pods``: GPUs, placement, security contexts, pull secrets and policy, pod
labels and annotations) fill in what the manifest's ``kubernetes:`` block leaves out.
"""

from __future__ import annotations

import math
from typing import Any

from kubernetes.aio.client import (
    V1Container,
    V1ContainerPort,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStrategy,
    V1EnvVar,
    V1EnvVarSource,
    V1HTTPGetAction,
    V1Job,
    V1JobSpec,
    V1LabelSelector,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Probe,
    V1SecretKeySelector,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
)

from serving.kube import names
from serving.kube.pod_defaults import PodDefaults, VllmPods
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import cache_mount, cache_volume, compile_cache_mount, shared_memory
from serving.kube.workload import QuantizationWorkload, VariantWorkload
from serving.manifest import KubernetesOptions
from serving.worker.protocol import GGUF_FILE

KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
KEDA_PAUSED = "autoscaling.keda.sh/paused-replicas"  # KEDA holds the target at this count
PORT = 8000
VLLM_CONTAINER = "vllm"
QUANTIZER_CONTAINER = "quantize"


def vllm_args(w: VariantWorkload, pods: VllmPods, gpus: int) -> list[str]:
    """Arguments of ``vllm serve``, the same settings the local launcher passes, then the
    chart's ``vllm.extraArgs``; ``gpus``: the pod's."""
    model = [str(w.model_path / GGUF_FILE), "--tokenizer", str(w.model_path)] if w.gguf else []
    args = [
        *(model or [str(w.model_path)]),
        "--served-model-name", *w.served_names,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--max-model-len", str(w.serve.max_model_len),
        "--dtype", w.serve.dtype,
        "--tensor-parallel-size", str(w.tensor_parallel_size),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if gpus or w.kube.gpu_memory_utilization is not None:
        share = pods.gpu_memory_utilization_for(w.kube, w.serve)
        args += ["--gpu-memory-utilization", str(share)]
    if w.quantization:
        args += ["--quantization", w.quantization]
    if w.serve.enforce_eager:
        args.append("--enforce-eager")
    return [*args, *w.serve.extra_args, *pods.extra_args]


COMPILE_CACHE = "/var/cache/vllm-compile"  # the volume's .vllm-cache/<shape-method> folder
# Right for a vLLM on the gateway's host only: a pod's GPUs are the scheduler's (the device
# plugin makes them visible), and its compile cache is the volume's folder at COMPILE_CACHE.
HOST_ONLY = frozenset({"CUDA_VISIBLE_DEVICES", "VLLM_CACHE_ROOT"})


def vllm_env(w: VariantWorkload, pods: VllmPods, gpus: int) -> list[V1EnvVar]:
    """What a local vLLM of the variant gets (serve.env, the kernel choice's
    VLLM_DISABLED_KERNELS, the CUDA settings), less HOST_ONLY, plus the pod's compile cache;
    then the chart's ``vllm.env`` where it names other variables."""
    env = {"VLLM_CACHE_ROOT": COMPILE_CACHE}
    env |= {name: value for name, value in w.env.items() if name not in HOST_ONLY}
    if w.tensor_parallel_size > 1:  # NVLink multicast (NVLS) fails on many hosts: keep it off
        env.setdefault("NCCL_NVLS_ENABLE", "0")
    if not gpus:  # the CPU build sizes its KV cache from this
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(w.serve.cpu_kv_cache_gib))
    return pods.env_after([V1EnvVar(name=name, value=value) for name, value in env.items()])


# Beyond what the startup probe allows: scheduling the pod and pulling vLLM's image come first.
PROGRESS_MARGIN_S = 600


def progress_deadline_s(w: VariantWorkload) -> int:
    """How long the Deployment controller waits for a ready pod before it reports
    ProgressDeadlineExceeded, which fails the start: longer than the startup probe allows
    (``serve.startup_timeout_s``), so a slow load is not cut short and the gateway's own
    timeout, which says what the pod waits for, comes first."""
    return math.ceil(w.serve.startup_timeout_s) + PROGRESS_MARGIN_S


def _health_probe(period_s: int, failures: int) -> V1Probe:
    return V1Probe(
        http_get=V1HTTPGetAction(path="/health", port="http"),
        period_seconds=period_s,
        timeout_seconds=5,
        failure_threshold=failures,
    )


def vllm_container(w: VariantWorkload, settings: KubernetesSettings, gpus: int) -> V1Container:
    pods = settings.pods.vllm
    mounts = [cache_mount(read_only=True), compile_cache_mount(w.compile_key, COMPILE_CACHE)]
    if w.tensor_parallel_size > 1:
        mounts.append(shared_memory(pods.shm_size)[1])
    return V1Container(
        name=VLLM_CONTAINER,
        image=settings.vllm_image,
        image_pull_policy=pods.image_pull_policy,
        command=["vllm", "serve"],
        args=vllm_args(w, pods, gpus),
        ports=[V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        env=vllm_env(w, pods, gpus),
        resources=pods.resources_for(w.kube, gpus),
        volume_mounts=mounts,
        # Loading may take long: liveness waits for the first success of the startup probe.
        startup_probe=_health_probe(10, math.ceil(w.serve.startup_timeout_s / 10) + 1),
        readiness_probe=_health_probe(5, 3),
        liveness_probe=_health_probe(15, 4),
        security_context=pods.security_context,
    )


def _pod_spec(
    kube: KubernetesOptions,
    pods: PodDefaults,
    pull_secrets: tuple[V1LocalObjectReference, ...],
    container: V1Container,
    volumes: list[V1Volume],
) -> V1PodSpec:
    """Every pod Quantgate makes: one container, the manifest's node selector and tolerations
    (else the chart's), the chart's pull secrets, pod security context, affinity and priority
    class, no service-account token (neither vLLM nor the quantizer calls the API)."""
    return V1PodSpec(
        containers=[container],
        volumes=volumes,
        node_selector=pods.node_selector_for(kube),
        tolerations=pods.tolerations_for(kube),
        image_pull_secrets=list(pull_secrets) or None,
        security_context=pods.pod_security_context,
        affinity=pods.affinity,
        priority_class_name=pods.priority_class_name,
        automount_service_account_token=False,
    )


def deployment(
    w: VariantWorkload, settings: KubernetesSettings, replicas: int | None = 1
) -> V1Deployment:
    """``replicas`` None: left out, for the autoscaler to own (``scaled_object``)."""
    labels = names.variant_labels(w.model, w.variant, w.recipe_hash)
    pods = settings.pods.vllm
    gpus = pods.gpus_for(w.kube, w.tensor_parallel_size)
    volumes = [cache_volume(settings.cache_pvc)]
    if w.tensor_parallel_size > 1:
        volumes.append(shared_memory(pods.shm_size)[0])
    container = vllm_container(w, settings, gpus)
    pod = _pod_spec(w.kube, pods, settings.pods.image_pull_secrets, container, volumes)
    pod.runtime_class_name = pods.runtime_class_name
    pod.termination_grace_period_seconds = pods.termination_grace_period_seconds
    return V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=_metadata(w.name, settings, labels, names.exact_names(w.model, w.variant)),
        spec=V1DeploymentSpec(
            replicas=replicas,
            selector=V1LabelSelector(match_labels=names.selector(w.model, w.variant)),
            strategy=V1DeploymentStrategy(type="Recreate"),
            progress_deadline_seconds=progress_deadline_s(w),
            template=V1PodTemplateSpec(
                metadata=pods.pod_metadata(labels, names.exact_names(w.model, w.variant)),
                spec=pod,
            ),
        ),
    )


def scaled_object(w: VariantWorkload, settings: KubernetesSettings) -> dict[str, Any]:
    """KEDA's ScaledObject for an autoscaled variant: its Deployment between min and max pods,
    one more per ``waiting_per_replica`` requests in vLLM's queue (as Prometheus has it from
    the chart's PodMonitor, which labels the samples with model and variant)."""
    scaling = w.kube.autoscaling
    assert scaling is not None and settings.prometheus_url
    where = f'namespace="{settings.namespace}",model="{names.label_value(w.model)}",'
    where += f'variant="{names.label_value(w.variant)}"'
    trigger = {
        "serverAddress": settings.prometheus_url,
        "query": f"sum(vllm:num_requests_waiting{{{where}}})",
        "threshold": str(scaling.waiting_per_replica),
    }
    labels = names.variant_labels(w.model, w.variant, w.recipe_hash)
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}",
        "kind": "ScaledObject",
        "metadata": {"name": w.name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"name": w.name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [{"type": "prometheus", "metadata": trigger}],
        },
    }


def service(w: VariantWorkload, settings: KubernetesSettings) -> V1Service:
    labels = names.variant_labels(w.model, w.variant, w.recipe_hash)
    return V1Service(
        api_version="v1",
        kind="Service",
        metadata=_metadata(w.name, settings, labels, names.exact_names(w.model, w.variant)),
        spec=V1ServiceSpec(
            type="ClusterIP",
            selector=names.selector(w.model, w.variant),
            ports=[V1ServicePort(name="http", port=PORT, target_port="http", protocol="TCP")],
        ),
    )


# The quantizer image keeps the Hub off (calibration data and checkpoints are local files);
# a Hub download turns it on, under both names huggingface_hub has read.
HUB_ONLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def quantizer_env(q: QuantizationWorkload, settings: KubernetesSettings) -> list[V1EnvVar]:
    """Unbuffered output; for a Hub download, the Hub on and the token from the configured
    Secret (optional: a public repository needs none) under the name the manifest gives it;
    then the chart's ``quantizer.env``."""
    env = [V1EnvVar(name="PYTHONUNBUFFERED", value="1")]
    if q.hub_download:
        env += [V1EnvVar(name=name, value="0") for name in HUB_ONLINE]
    if q.token_env and settings.hub_token_secret:
        ref = V1SecretKeySelector(name=settings.hub_token_secret, key="token", optional=True)
        env.append(V1EnvVar(name=q.token_env, value_from=V1EnvVarSource(secret_key_ref=ref)))
    return settings.pods.quantizer.env_after(env)


def quantization_job(q: QuantizationWorkload, settings: KubernetesSettings) -> V1Job:
    """One try (``backoffLimit: 0``): a failed quantization is reported, not retried."""
    labels = names.job_labels(q.model, q.variant, q.recipe_hash, q.job_id)
    pods = settings.pods.quantizer
    container = V1Container(
        name=QUANTIZER_CONTAINER,
        image=settings.quantizer_image,
        image_pull_policy=pods.image_pull_policy,
        command=["python", "-m", "serving.worker.quantize", str(q.spec_path)],
        env=quantizer_env(q, settings),
        resources=pods.resources_for(q.kube, pods.gpus_for(q.kube)),
        volume_mounts=[cache_mount(read_only=False)],
        security_context=pods.security_context,
    )
    volumes = [cache_volume(settings.cache_pvc)]
    pod = _pod_spec(q.kube, pods, settings.pods.image_pull_secrets, container, volumes)
    pod.restart_policy = "Never"
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_metadata(q.name, settings, labels, names.exact_names(q.model, q.variant)),
        spec=V1JobSpec(
            backoff_limit=0,
            ttl_seconds_after_finished=settings.job_ttl_s,
            active_deadline_seconds=settings.job_deadline_s,
            template=V1PodTemplateSpec(metadata=pods.pod_metadata(labels, {}), spec=pod),
        ),
    )


def _metadata(
    name: str, settings: KubernetesSettings, labels: dict[str, str], notes: dict[str, str]
) -> V1ObjectMeta:
    return V1ObjectMeta(name=name, namespace=settings.namespace, labels=labels, annotations=notes)
