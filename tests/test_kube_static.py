"""Static mode on Kubernetes (QUANTGATE_LAUNCHER=kubernetes-static): the chart's vLLM backends,
found by their labels on the fake API server, serve the gateway's requests; the gateway never
writes to the API (its Role only reads), refuses a variant without a backend, and starts no Job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fakes.kube_api import FakeKubernetes
from kubernetes.aio.client import (
    ApiClient,
    AppsV1Api,
    Configuration,
    CoreV1Api,
    V1Deployment,
    V1Service,
)
from pydantic import ValidationError
from test_kube_launcher import NS

from conftest import LLAMA_CONFIG, fake_upstream, free_port
from gateway.app import create_app
from gateway.settings import GatewaySettings
from serving.errors import BackendFailed, JobFailed
from serving.fleet import open_fleet
from serving.hardware import Gpu, Hardware
from serving.kube import static
from serving.kube.settings import KubernetesSettings
from serving.launcher import LaunchSpec
from serving.manifest import Manifest, parse_manifest

H100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100", 90, 0),))
RELEASE = {"app.kubernetes.io/instance": "qg", "app.kubernetes.io/component": "vllm"}
SELECTOR = "app.kubernetes.io/instance=qg,app.kubernetes.io/component=vllm"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def vllm() -> Iterator[str]:
    """The fake vLLM server, started as the chart starts tiny:base's backend."""
    with fake_upstream("tiny:base", "tiny") as url:
        yield url


def manifest(tmp_path: Path, serve: str = "{}") -> Manifest:
    """``serve``: tiny's serve options, as YAML."""
    source = tmp_path / "cache" / "models" / "tiny"
    source.mkdir(parents=True)
    (source / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    text = f"""
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {source}
    default_variant: base
    on_missing: {{action: wait, max_wait_s: 20}}
    serve: {serve}
    variants:
      base: {{method: none}}
      gptq: {{method: gptq, bits: 4}}
  other:
    source: {source}
    default_variant: base
    variants:
      base: {{method: none}}
"""
    return parse_manifest(text, tmp_path / "m.yaml")


async def chart_backend(
    api: ApiClient, name: str, model: str, variant: str, ready: int, **more: str
) -> None:
    """A backend's Deployment and Service labelled as the chart renders them (test_chart.py
    checks the gateway's selector against the rendered ones)."""
    labels = {**RELEASE, "quantgate.io/model": model, "quantgate.io/variant": variant, **more}
    meta = {"name": name, "namespace": NS, "labels": labels}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000}]}}  # fmt: skip
    spec = {"replicas": 1, "selector": {"matchLabels": labels}, "template": {}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    await CoreV1Api(api).create_namespaced_service(NS, V1Service.model_validate(service))
    apps = AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, V1Deployment.model_validate(deployment))
    status = {"replicas": 1, "readyReplicas": ready}
    await apps.patch_namespaced_deployment_status(name, NS, {"status": status})


def backends(
    api: ApiClient, upstream: str | None = None, retry_s: float = static.RETRY_S
) -> static.StaticBackends:
    """Static mode's finder; ``upstream``: where the test's fake vLLM listens, standing in for
    the Service's cluster address."""
    selector = static.StaticSettings(backend_selector=SELECTOR).labels()
    settings = KubernetesSettings(namespace=NS)
    address = None if upstream is None else (lambda _: upstream)
    return static.StaticBackends(api, settings, selector, 0.02, address, retry_s)


@asynccontextmanager
async def static_gateway(found: static.StaticBackends, m: Manifest) -> AsyncIterator[str]:
    """The gateway as `quantgate serve` runs it in static mode, on a real socket."""
    fleet = open_fleet(m, lambda spec: [], Path("/unused"), H100, scheduled=static.scheduled(found))
    port = free_port()
    config = uvicorn.Config(create_app(fleet, GatewaySettings()), port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the gateway did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task  # the fleet closes with it


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_the_gateway_serves_through_the_charts_backend_and_never_writes(
    cluster: FakeKubernetes, vllm: str, tmp_path: Path
) -> None:
    m = manifest(tmp_path)

    async def scenario() -> tuple[int, httpx.Response, dict[str, Any]]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            await chart_backend(api, "qg-quantgate-tiny-base", "tiny", "base", ready=1)
            # what dynamic mode left behind (scaled to zero) carries the model labels too
            await chart_backend(api, "qg-tiny-base-1a2b3c", "tiny", "base", ready=0,
                                **{"app.kubernetes.io/component": "server"})  # fmt: skip
            setup = len(cluster.requests())
            async with (
                static_gateway(backends(api, vllm), m) as url,
                httpx.AsyncClient(base_url=url, timeout=30) as client,
            ):
                answer = await client.post("/v1/chat/completions", json=chat("tiny"))
                cards = (await client.get("/v1/models")).json()["data"]
            return setup, answer, next(c for c in cards if c["id"] == "tiny:base")

    setup, answer, card = asyncio.run(scenario())
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert card["quantgate"]["state"] == "ready"
    made = cluster.requests()[setup:]
    assert made and {r.method for r in made} == {"GET"}  # nothing created, scaled or deleted
    (listing,) = [r for r in made if r.url.path.endswith("/services")]
    wanted = f"{SELECTOR},quantgate.io/model=tiny,quantgate.io/variant=base"
    assert listing.params["labelSelector"] == wanted


def test_a_variant_without_a_backend_or_a_build_is_refused_and_no_job_starts(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    m = manifest(tmp_path)

    async def scenario() -> tuple[int, httpx.Response, httpx.Response, dict[str, Any]]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            await chart_backend(api, "qg-quantgate-tiny-gptq", "tiny", "gptq", ready=1)
            setup = len(cluster.requests())
            async with (
                static_gateway(backends(api), m) as url,
                httpx.AsyncClient(base_url=url, timeout=30) as client,
            ):
                missing = await client.post("/v1/chat/completions", json=chat("other"))
                unbuilt = await client.post("/v1/chat/completions", json=chat("tiny:gptq"))
                jobs = (await client.get("/admin/jobs")).json()
            return setup, missing, unbuilt, jobs

    setup, missing, unbuilt, jobs = asyncio.run(scenario())
    assert missing.status_code == 503
    error = missing.json()["error"]
    assert error["code"] == "variant_unsupported_here" and error["param"] == "model"
    assert "other:base has no vLLM backend" in error["message"]
    assert f"no Service in namespace {NS} has the labels {SELECTOR}," in error["message"]
    assert "Add {model: other, variant: base} to static.backends" in error["message"]
    # its backend runs, but the variant is not built: refused, no Job
    assert unbuilt.status_code == 503
    message = unbuilt.json()["error"]["message"]
    assert "static mode serves what the chart runs and starts no Job" in message
    assert "tiny:gptq is not built on the cache volume" in message
    assert {r.method for r in cluster.requests()[setup:]} == {"GET"}  # no Job, nothing else
    [job] = jobs["data"]  # the build is on record, refused before any work
    assert (job["variant"], job["state"]) == ("gptq", "failed")


def test_fp8_is_served_unmeasured_unless_its_quality_budget_needs_a_measure_job(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    """vLLM quantizes FP8 at load; dynamic mode measures it through its server with a Job."""
    source = manifest(tmp_path).models["tiny"].source
    m = parse_manifest(f"""
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {source}
    default_variant: fp8
    variants:
      fp8: {{method: fp8}}
      fp8-gated: {{method: fp8, max_ppl_increase: 0.05}}
""", tmp_path / "m.yaml")  # fmt: skip

    async def scenario() -> tuple[int, str, str]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            for variant in ("fp8", "fp8-gated"):
                await chart_backend(api, f"qg-quantgate-tiny-{variant}", "tiny", variant, ready=1)
            setup = len(cluster.requests())
            fleet = open_fleet(m, lambda spec: [], Path("/unused"), H100,
                               scheduled=static.scheduled(backends(api)))  # fmt: skip
            lease = await fleet.acquire("tiny", "fp8")
            lease.release()
            with pytest.raises(JobFailed) as refused:
                await fleet.acquire("tiny", "fp8-gated")
            await fleet.aclose()
            return setup, lease.url, str(refused.value)

    setup, url, refused = asyncio.run(scenario())
    assert url == f"http://qg-quantgate-tiny-fp8.{NS}.svc:8000"
    assert "quality budget (max_ppl_increase) needs its perplexity" in refused
    assert {r.method for r in cluster.requests()[setup:]} == {"GET"}


def spec(model: str = "tiny", variant: str = "base", replica: int = 0) -> LaunchSpec:
    return LaunchSpec(Path("/unused"), (f"{model}:{variant}",), 0, Path("/unused.log"),
                      model=model, variant=variant, replica=replica)  # fmt: skip


def test_a_backend_is_ready_once_its_deployment_has_a_ready_replica(
    cluster: FakeKubernetes,
) -> None:
    async def scenario() -> tuple[str, bool, bool]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            await chart_backend(api, "qg-quantgate-tiny-base", "tiny", "base", ready=0)
            server = static.launch(backends(api))(spec())
            starting = asyncio.create_task(server.start(timeout_s=10))
            await asyncio.sleep(0.1)
            assert not starting.done() and not server.alive()
            await AppsV1Api(api).patch_namespaced_deployment_status(
                "qg-quantgate-tiny-base", NS, {"status": {"readyReplicas": 1}}
            )
            await asyncio.wait_for(starting, 5)
            alive = server.alive()
            await server.stop()
            return server.url, alive, server.alive()

    url, alive, after = asyncio.run(scenario())
    assert url == f"http://qg-quantgate-tiny-base.{NS}.svc:8000"  # the Service's cluster name
    assert alive and not after


def test_a_backend_not_ready_in_time_is_asked_again_by_a_later_request(
    cluster: FakeKubernetes, vllm: str, tmp_path: Path
) -> None:
    """Kubernetes keeps restarting a backend's pods: one not ready within the start timeout
    answers 503 with Retry-After, not a 502 that holds until an admin rebuilds it; the first
    request after the retry time asks again and is served once the backend is ready."""
    m = manifest(tmp_path, serve="{startup_timeout_s: 0.5}")

    async def scenario() -> list[httpx.Response]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            found = backends(api, vllm, retry_s=1.5)
            await chart_backend(api, "qg-quantgate-tiny-base", "tiny", "base", ready=0)
            async with (
                static_gateway(found, m) as url,
                httpx.AsyncClient(base_url=url, timeout=30) as client,
            ):
                answers = [await client.post("/v1/chat/completions", json=chat("tiny"))]
                await AppsV1Api(api).patch_namespaced_deployment_status(
                    "qg-quantgate-tiny-base", NS, {"status": {"readyReplicas": 1}}
                )
                answers.append(await client.post("/v1/chat/completions", json=chat("tiny")))
                await asyncio.sleep(1.6)
                answers.append(await client.post("/v1/chat/completions", json=chat("tiny")))
            return answers

    not_ready, held, served = asyncio.run(scenario())
    for answer in (not_ready, held):
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "backend_not_ready" and error["param"] == "model"
        assert "was not ready within 0 s" in error["message"]
        assert "the next request after 2 s asks again" in error["message"]
        assert 1 <= int(answer.headers["Retry-After"]) <= 2
    assert served.status_code == 200, served.text


def test_one_backend_per_variant_and_one_replica(cluster: FakeKubernetes) -> None:
    async def scenario() -> None:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            await chart_backend(api, "a", "tiny", "base", ready=1)
            await chart_backend(api, "b", "tiny", "base", ready=1)
            with pytest.raises(BackendFailed, match=r"tiny:base has 2 backends \(a, b\)"):
                await static.launch(backends(api))(spec()).start(timeout_s=5)
            with pytest.raises(BackendFailed, match=r"set serve\.replicas to 1"):
                static.launch(backends(api))(spec(replica=1))

    asyncio.run(scenario())


def test_the_backend_selector_is_key_value_pairs() -> None:
    assert static.StaticSettings(backend_selector=SELECTOR).labels() == RELEASE
    assert static.StaticSettings().labels() == {"app.kubernetes.io/component": "vllm"}
    assert static.StaticSettings(backend_selector="").labels() == {}
    for bad in ("component", "a=b,", "a in (b)", "a!=b"):
        with pytest.raises(ValidationError):
            static.StaticSettings(backend_selector=bad)
