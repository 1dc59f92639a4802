"""The launcher's API flows against an in-process fake API server (kmock).

The fake runs no controllers: each test plays the Deployment or Job controller by patching
status through the status endpoints, and the kubelet by creating pods and serving their log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fakes.kube_api import FakeKubernetes
from kubernetes.aio.client import (
    ApiClient,
    AppsV1Api,
    BatchV1Api,
    Configuration,
    CoreV1Api,
    V1Pod,
)

from serving.errors import BackendFailed, JobFailed
from serving.kube import names
from serving.kube.client import connect
from serving.kube.launcher import KubernetesLauncher
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload, VariantWorkload
from serving.manifest import Manifest, parse_manifest

NS = "llm"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
JOBS = "batch/v1/jobs"
JOB_ID = "20261125-191924-ab12cd34"
T = TypeVar("T")

MANIFEST = """\
version: 1
cache_dir: /srv/cache
models:
  tiny:
    source: /srv/cache/models/tiny
    default_variant: gptq
    variants:
      gptq: {method: gptq, bits: 4}
"""


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return parse_manifest(MANIFEST, Path("/m/kube.yaml"))


def variant(manifest: Manifest, quantization: str | None = "compressed-tensors") -> VariantWorkload:
    volume = CacheVolume("quantgate-cache", Path("/srv/cache"))
    folder = Path("/srv/cache/tiny/gptq-abc")
    return VariantWorkload.of("tiny", manifest.models["tiny"], "gptq", folder, volume, quantization)


def quantization(manifest: Manifest) -> QuantizationWorkload:
    volume = CacheVolume("quantgate-cache", Path("/srv/cache"))
    spec = Path("/srv/cache/.jobs", JOB_ID, "spec.json")
    return QuantizationWorkload.of(JOB_ID, "tiny", manifest.models["tiny"], "gptq", spec, volume)


class Scene:
    """The launcher under test and the controllers' side of the same fake API server."""

    def __init__(self, api: ApiClient) -> None:
        self.launcher = KubernetesLauncher(api, KubernetesSettings(namespace=NS), poll_s=0.02)
        self.apps, self.core, self.batch = AppsV1Api(api), CoreV1Api(api), BatchV1Api(api)

    async def deployment_status(self, name: str, **status: Any) -> None:
        await self.apps.patch_namespaced_deployment_status(name, NS, {"status": status})

    async def job_status(self, name: str, **status: Any) -> None:
        await self.batch.patch_namespaced_job_status(name, NS, {"status": status})

    async def pod(self, name: str, labels: dict[str, str], status: dict[str, Any]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": status,
        }
        await self.core.create_namespaced_pod(NS, V1Pod.model_validate(body))


def play(cluster: FakeKubernetes, scenario: Callable[[Scene], Awaitable[T]]) -> T:
    async def main() -> T:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            return await scenario(Scene(api))

    return asyncio.run(main())


async def until_stored(cluster: FakeKubernetes, resource: str, name: str) -> None:
    for _ in range(500):
        if cluster.stored(resource, NS, name) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{resource} {name} was never created")


async def soon(task: asyncio.Task[Any]) -> None:
    """Let ``task`` poll a few times and check it is still waiting."""
    await asyncio.sleep(0.1)
    assert not task.done()


# -- variants ------------------------------------------------------------------------------


def test_create_fake_readiness_ready(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)

    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(w)
        waiting = asyncio.create_task(s.launcher.wait_ready("tiny", "gptq", timeout_s=10))
        await soon(waiting)
        assert await s.launcher.ready_replicas("tiny", "gptq") == 0
        await s.deployment_status(w.name, replicas=1, readyReplicas=1)
        await asyncio.wait_for(waiting, 5)
        assert await s.launcher.ready_replicas("tiny", "gptq") == 1

    play(cluster, scenario)
    dep = cluster.stored(DEPLOYMENTS, NS, w.name)
    svc = cluster.stored(SERVICES, NS, w.name)
    assert dep is not None and svc is not None
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "quantgate"
    assert dep["metadata"]["labels"]["quantgate.io/recipe-hash"] == w.recipe_hash
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert w.name.startswith("qg-tiny-gptq-")


def test_backend_url_is_the_services_cluster_name(manifest: Manifest) -> None:
    launcher = KubernetesLauncher(ApiClient(), KubernetesSettings(namespace=NS))
    name = names.variant_name("tiny", "gptq")
    assert launcher.backend_url("tiny", "gptq") == f"http://{name}.{NS}.svc:8000"


def test_ready_only_once_the_current_spec_is_observed(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    w = variant(manifest)

    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(w)
        # an edit the controller has not seen yet; the ready replica is of the old spec
        await s.apps.patch_namespaced_deployment(w.name, NS, {"metadata": {"generation": 2}})
        await s.deployment_status(w.name, readyReplicas=1, observedGeneration=1)
        waiting = asyncio.create_task(s.launcher.wait_ready("tiny", "gptq", timeout_s=10))
        await soon(waiting)
        await s.deployment_status(w.name, readyReplicas=1, observedGeneration=2)
        await asyncio.wait_for(waiting, 5)

    play(cluster, scenario)


def test_ensure_twice_updates_in_place(cluster: FakeKubernetes, manifest: Manifest) -> None:
    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(variant(manifest))
        await s.launcher.ensure_variant(variant(manifest, quantization="gptq"), replicas=0)

    play(cluster, scenario)
    dep = cluster.stored(DEPLOYMENTS, NS, variant(manifest).name)
    assert dep is not None
    assert dep["spec"]["replicas"] == 0
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--quantization") + 1] == "gptq"
    patches = [r for r in cluster.requests() if r.method == "PATCH"]
    assert {r.headers["Content-Type"] for r in patches} == {"application/apply-patch+yaml"}
    assert all(r.params.get("fieldManager") == "quantgate" for r in patches)


def test_scale_to_zero_and_back(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)

    async def replicas(s: Scene) -> int | None:
        replicas: int | None = (await s.apps.read_namespaced_deployment(w.name, NS)).spec.replicas
        return replicas

    async def scenario(s: Scene) -> list[int | None]:
        await s.launcher.ensure_variant(w)
        seen = [await replicas(s)]
        await s.launcher.scale("tiny", "gptq", 0)
        seen.append(await replicas(s))
        await s.launcher.scale("tiny", "gptq", 1)
        seen.append(await replicas(s))
        return seen

    assert play(cluster, scenario) == [1, 0, 1]
    assert cluster.stored(SERVICES, NS, w.name) is not None  # scaling keeps the Service


def test_scale_of_a_missing_variant_fails(cluster: FakeKubernetes) -> None:
    async def scenario(s: Scene) -> None:
        await s.launcher.scale("tiny", "nope", 0)

    with pytest.raises(
        BackendFailed, match="cannot scale tiny:nope: the Kubernetes API answered 404"
    ):
        play(cluster, scenario)


def test_delete(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)

    async def scenario(s: Scene) -> int | None:
        await s.launcher.ensure_variant(w)
        await s.launcher.delete("tiny", "gptq")
        await s.launcher.delete("tiny", "gptq")  # absent is fine
        return await s.launcher.ready_replicas("tiny", "gptq")

    assert play(cluster, scenario) is None
    assert cluster.stored(DEPLOYMENTS, NS, w.name) is None
    assert cluster.stored(SERVICES, NS, w.name) is None
    deletes = [r for r in cluster.requests() if r.method == "DELETE"]
    assert len(deletes) == 4
    assert {r.params.get("propagationPolicy") for r in deletes} == {"Background"}


def test_a_crashing_pod_fails_the_wait_with_its_log(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    w = variant(manifest)
    pod = f"{w.name}-7d9f8-x2x"
    cluster.serve_log(NS, pod, "INFO loading\nRuntimeError: CUDA out of memory\n")
    crashing = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "vllm",
                "image": "vllm",
                "imageID": "",
                "ready": False,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            }
        ],
    }

    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(w)
        await s.pod(pod, names.variant_labels("tiny", "gptq", w.recipe_hash), crashing)
        await s.launcher.wait_ready("tiny", "gptq", timeout_s=30)

    with pytest.raises(BackendFailed) as info:
        play(cluster, scenario)
    assert "vLLM for tiny:gptq cannot start" in str(info.value)
    assert "CrashLoopBackOff: back-off 40s" in str(info.value)
    assert "CUDA out of memory" in info.value.log_tail
    (log_request,) = [r for r in cluster.requests() if r.url.path.endswith("/log")]
    assert log_request.params["previous"] == "true"  # the crashed run's log
    assert log_request.params["container"] == "vllm"


def test_a_stuck_rollout_fails_the_wait(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)
    stuck = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "x" has timed out progressing.',
    }

    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(w)
        await s.deployment_status(w.name, conditions=[stuck])
        await s.launcher.wait_ready("tiny", "gptq", timeout_s=30)

    with pytest.raises(BackendFailed, match="ProgressDeadlineExceeded: ReplicaSet"):
        play(cluster, scenario)


def test_timeout_says_what_the_pods_wait_for(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)
    pending = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    }

    async def scenario(s: Scene) -> None:
        await s.launcher.ensure_variant(w)
        await s.pod(f"{w.name}-1", names.variant_labels("tiny", "gptq", w.recipe_hash), pending)
        await s.launcher.wait_ready("tiny", "gptq", timeout_s=0.2)

    with pytest.raises(BackendFailed) as info:
        play(cluster, scenario)
    assert "was not ready within 0 s" in str(info.value)
    assert "is Pending (Unschedulable: 0/3 nodes are available" in str(info.value)


def test_server_start_and_stop(cluster: FakeKubernetes, manifest: Manifest) -> None:
    w = variant(manifest)

    async def scenario(s: Scene) -> None:
        server = s.launcher.server(w)
        assert not server.alive() and server.pid is None
        starting = asyncio.create_task(server.start(timeout_s=10))
        await until_stored(cluster, DEPLOYMENTS, w.name)
        await soon(starting)
        await s.deployment_status(w.name, replicas=1, readyReplicas=1)
        await asyncio.wait_for(starting, 5)
        assert server.alive()
        assert server.url == s.launcher.backend_url("tiny", "gptq")
        assert server.started_at is not None and server.ready_at is not None
        await server.stop()
        assert not server.alive()

    play(cluster, scenario)
    dep = cluster.stored(DEPLOYMENTS, NS, w.name)
    assert dep is not None and dep["spec"]["replicas"] == 0


def test_a_server_that_never_gets_ready_is_scaled_back_to_zero(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    w = variant(manifest)

    async def scenario(s: Scene) -> None:
        await s.launcher.server(w).start(timeout_s=0.1)

    with pytest.raises(BackendFailed, match="not ready within 0 s: no pod was created"):
        play(cluster, scenario)
    dep = cluster.stored(DEPLOYMENTS, NS, w.name)
    assert dep is not None and dep["spec"]["replicas"] == 0


def test_an_unreachable_api_server_is_a_backend_failure(manifest: Manifest) -> None:
    async def scenario() -> None:
        async with ApiClient(Configuration(host="http://127.0.0.1:9")) as api:
            launcher = KubernetesLauncher(api, KubernetesSettings(namespace=NS))
            await launcher.ensure_variant(variant(manifest))

    with pytest.raises(BackendFailed, match="cannot create tiny:gptq: cannot reach the Kubern"):
        asyncio.run(scenario())


# -- quantization jobs -----------------------------------------------------------------------

WORKER_LOG = """\
QUANTGATE_PROGRESS {"stage": "load", "source": "/var/cache/quantgate/models/tiny"}
QUANTGATE_PROGRESS {"stage": "calibrate", "samples": 64}
QUANTGATE_PROGRESS {"stage": "save"}
QUANTGATE_RESULT {"quantize_s": 12.5, "device": "cuda"}
"""


async def job_pod(s: Scene, q: QuantizationWorkload, phase: str) -> None:
    labels = names.job_labels(q.model, q.variant, q.recipe_hash, q.job_id)
    await s.pod(f"{q.name}-abcde", labels, {"phase": phase})


def test_job_success(cluster: FakeKubernetes, manifest: Manifest) -> None:
    q = quantization(manifest)
    first, rest = WORKER_LOG.splitlines()[:2], WORKER_LOG.splitlines()[2:]
    cluster.serve_log(NS, f"{q.name}-abcde", "\n".join(first))
    lines: list[str] = []

    async def scenario(s: Scene) -> dict[str, Any] | None:
        running = asyncio.create_task(s.launcher.run_quantization_job(q, on_line=lines.append))
        await until_stored(cluster, JOBS, q.name)
        await job_pod(s, q, "Running")
        await soon(running)  # polled many times
        assert lines == first
        cluster.serve_log(NS, f"{q.name}-abcde", "\n".join(rest))
        await soon(running)
        complete = {"type": "Complete", "status": "True"}
        await s.job_status(q.name, succeeded=1, conditions=[complete])
        return await asyncio.wait_for(running, 5)

    assert play(cluster, scenario) == {"quantize_s": 12.5, "device": "cuda"}
    assert lines == WORKER_LOG.splitlines()  # every line once, in order
    job = cluster.stored(JOBS, NS, q.name)
    assert job is not None  # a finished Job stays until its TTL
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == (
        f"/var/cache/quantgate/.jobs/{JOB_ID}/spec.json"
    )


def test_job_failure_has_the_reason_and_the_log_tail(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    q = quantization(manifest)
    cluster.serve_log(NS, f"{q.name}-abcde", "QUANTGATE_PROGRESS {}\nRuntimeError: NaN in GPTQ\n")
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
    }

    async def scenario(s: Scene) -> None:
        running = asyncio.create_task(s.launcher.run_quantization_job(q))
        await until_stored(cluster, JOBS, q.name)
        await job_pod(s, q, "Failed")
        await s.job_status(q.name, failed=1, conditions=[failed])
        await asyncio.wait_for(running, 5)

    with pytest.raises(JobFailed) as info:
        play(cluster, scenario)
    assert str(info.value) == (
        f"quantization of tiny:gptq (Job {q.name}) failed: BackoffLimitExceeded: "
        "Job has reached the specified backoff limit"
    )
    assert info.value.log_tail.endswith("RuntimeError: NaN in GPTQ")
    assert cluster.stored(JOBS, NS, q.name) is not None  # kept for kubectl, until its TTL


def test_a_failed_pod_fails_the_job_before_its_condition(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    q = quantization(manifest)

    async def scenario(s: Scene) -> None:
        running = asyncio.create_task(s.launcher.run_quantization_job(q))
        await until_stored(cluster, JOBS, q.name)
        await s.job_status(q.name, failed=1)
        await asyncio.wait_for(running, 5)

    with pytest.raises(JobFailed, match="failed: its pod failed"):
        play(cluster, scenario)


def test_an_existing_job_is_followed_not_recreated(
    cluster: FakeKubernetes, manifest: Manifest
) -> None:
    q = quantization(manifest)

    async def scenario(s: Scene) -> dict[str, Any] | None:
        first = asyncio.create_task(s.launcher.run_quantization_job(q))
        await until_stored(cluster, JOBS, q.name)
        second = asyncio.create_task(s.launcher.run_quantization_job(q))
        await soon(second)
        await s.job_status(q.name, succeeded=1)
        await asyncio.wait_for(first, 5)
        return await asyncio.wait_for(second, 5)

    assert play(cluster, scenario) is None  # no pod, no log: no result line
    posts = [r for r in cluster.requests() if r.method == "POST"]
    assert len(posts) == 2  # the second create was answered 409 and followed the first


def test_a_cancelled_job_is_deleted(cluster: FakeKubernetes, manifest: Manifest) -> None:
    q = quantization(manifest)

    async def scenario(s: Scene) -> None:
        running = asyncio.create_task(s.launcher.run_quantization_job(q))
        await until_stored(cluster, JOBS, q.name)
        await soon(running)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    play(cluster, scenario)
    assert cluster.stored(JOBS, NS, q.name) is None


# -- connecting ------------------------------------------------------------------------------


def test_connect_reads_a_kubeconfig(
    cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{cluster.url}"}}}}]
users: [{{name: me, user: {{token: secret-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me, namespace: {NS}}}}}]
current-context: fake
"""
    )

    async def scenario() -> None:
        api = await connect(kubeconfig)
        try:
            await CoreV1Api(api).list_namespaced_pod(NS)
        finally:
            await api.close()  # type: ignore[no-untyped-call]

    asyncio.run(scenario())
    (request,) = [r for r in cluster.requests() if r.url.path.endswith("/pods")]
    assert request.headers["Authorization"] == "Bearer secret-token"
