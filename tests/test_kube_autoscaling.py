"""vLLM Deployments scaled by KEDA on their own queue (manifest ``kubernetes.autoscaling``),
against the fake API server: the gateway leaves the replica count to the autoscaler, stops an
idle variant by pausing its ScaledObject at zero, and resumes it on the next start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fakes.kube_api import FakeKubernetes
from kubernetes.aio.client import ApiClient, Configuration
from test_kube_launcher import DEPLOYMENTS, NS, Scene, cluster

from serving.errors import BackendFailed, ManifestError
from serving.kube import names, objects
from serving.kube.launcher import KubernetesLauncher
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import VariantWorkload
from serving.manifest import parse_manifest

__all__ = ["cluster"]  # the fake API server fixture
SCALED = "keda.sh/v1alpha1/scaledobjects"
PROMETHEUS = "http://prometheus.monitoring.svc:9090"
MANIFEST = """\
version: 1
cache_dir: /srv/cache
models:
  tiny:
    source: /srv/cache/models/tiny
    default_variant: gptq
    kubernetes:
      autoscaling: {min_replicas: 1, max_replicas: 4, waiting_per_replica: 8}
    variants:
      gptq: {method: gptq, bits: 4}
"""


def workload() -> VariantWorkload:
    manifest = parse_manifest(MANIFEST, Path("/m/kube.yaml"))
    volume = CacheVolume("quantgate-cache", Path("/srv/cache"))
    folder = Path("/srv/cache/tiny/gptq-abc")
    return VariantWorkload.of("tiny", manifest.models["tiny"], "gptq", folder, volume)


def deployment_patches(cluster: FakeKubernetes, name: str) -> list[dict[str, Any]]:
    """The bodies the gateway sent to the Deployment itself (not to its status)."""
    return [
        json.loads(r.body)
        for r in cluster.requests()
        if "PATCH" in str(r.method).upper() and r.name == name and not r.subresource
        and r.url.path.split("/")[-2] == "deployments" and r.body
    ]  # fmt: skip


def test_keda_owns_the_replica_count_and_stop_pauses_it_at_zero(cluster: FakeKubernetes) -> None:
    w = workload()
    settings = KubernetesSettings(namespace=NS, prometheus_url=PROMETHEUS)

    async def scenario() -> dict[str, Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            launcher = KubernetesLauncher(api, settings, poll_s=0.02)
            await launcher.ensure_variant(w)
            first = cluster.stored(SCALED, NS, w.name)
            # KEDA, seeing a queue, scales the Deployment to 3
            await s.apps.patch_namespaced_deployment(w.name, NS, {"spec": {"replicas": 3}})
            await launcher.ensure_variant(w)  # the gateway applies it again (a later start)
            kept = cluster.stored(DEPLOYMENTS, NS, w.name)
            await launcher.scale(w.model, w.variant, 0, autoscaled=True)  # the variant is idle
            paused = cluster.stored(SCALED, NS, w.name)
            stopped = cluster.stored(DEPLOYMENTS, NS, w.name)
            await launcher.ensure_variant(w)  # its next request
            resumed = cluster.stored(SCALED, NS, w.name)
            return {"first": first, "kept": kept, "paused": paused, "stopped": stopped,
                    "resumed": resumed}  # fmt: skip

    out = asyncio.run(scenario())
    spec = out["first"]["spec"]
    assert spec["scaleTargetRef"] == {"name": w.name}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "8.0"
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS
    assert trigger["metadata"]["query"] == (
        f'sum(vllm:num_requests_waiting{{namespace="{NS}",model="tiny",variant="gptq"}})'
    )
    assert out["kept"]["spec"]["replicas"] == 3  # the autoscaler's count stands
    applied = deployment_patches(cluster, w.name)
    gateway = [b for b in applied if b.get("kind") == "Deployment"]  # not the test's KEDA
    assert len(gateway) == 3 and all("replicas" not in b["spec"] for b in gateway), applied
    annotations = out["paused"]["metadata"]["annotations"]
    assert annotations[objects.KEDA_PAUSED] == "0" and out["stopped"]["spec"]["replicas"] == 0
    assert objects.KEDA_PAUSED not in (out["resumed"]["metadata"].get("annotations") or {})
    assert names.variant_name("tiny", "gptq") == w.name


def test_autoscaling_without_prometheus_says_what_to_set(cluster: FakeKubernetes) -> None:
    async def scenario() -> None:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            launcher = KubernetesLauncher(api, KubernetesSettings(namespace=NS))
            with pytest.raises(BackendFailed, match="set QUANTGATE_PROMETHEUS_URL"):
                await launcher.ensure_variant(workload())

    asyncio.run(scenario())
    assert cluster.stored(DEPLOYMENTS, NS, workload().name) is None  # nothing half-made


def test_the_manifest_checks_the_range() -> None:
    with pytest.raises(
        ManifestError,
        match=r"m.yaml:\d+: models.tiny.kubernetes.autoscaling.max_replicas: is below min_rep",
    ):
        parse_manifest(
            MANIFEST.replace(
                "min_replicas: 1, max_replicas: 4", "min_replicas: 2, max_replicas: 1"
            ),
            Path("/m.yaml"),
        )
