"""The fleet on Kubernetes (what `quantgate serve` does with QUANTGATE_LAUNCHER=kubernetes):
a missing variant becomes a quantization Job, then a Deployment + Service, on the fake API
server; the test plays the Job's pod and the Deployment controller."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fakes.kube_api import FakeKubernetes
from kubernetes.aio.client import ApiClient, Configuration, V1EnvVar, V1Job
from test_kube_launcher import DEPLOYMENTS, JOBS, NS, WORKER_LOG, Scene, until_stored

from serving.fleet import Fleet, Scheduled, open_fleet
from serving.hardware import Gpu, Hardware
from serving.job import SOURCE
from serving.jobs import JobRunner
from serving.kube import names, objects, runtime
from serving.kube.launcher import KubernetesLauncher
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload
from serving.manifest import Manifest, parse_manifest
from serving.store import VariantStore

H100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100", 90, 0),))
W4A16 = {"weights": {"num_bits": 4, "type": "int"}, "input_activations": None}
QUANTIZED = {
    "quantization_config": {"quant_method": "compressed-tensors", "config_groups": {"g": W4A16}}
}


def kube_fleet(
    api: ApiClient, settings: KubernetesSettings, cache: Path, manifest: Manifest
) -> tuple[Fleet, JobRunner]:
    """The fleet as `quantgate serve` wires it on Kubernetes: jobs as Jobs, vLLM as Deployments,
    the cache volume at ``cache``."""
    launcher = KubernetesLauncher(api, settings, poll_s=0.02)
    volume = CacheVolume("quantgate-cache", cache)
    scheduled = Scheduled(
        runtime.launch(launcher, volume, lambda: fleet.manifest),
        runtime.remote_job(launcher, volume),
    )
    fleet = open_fleet(manifest, lambda spec: [], Path("/unused"), H100, scheduled=scheduled)
    return fleet, fleet.jobs


def test_a_missing_variant_is_built_by_a_job_then_served_by_a_deployment(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "models" / "tiny").mkdir(parents=True)
    (cache / "models" / "tiny" / "config.json").write_text("{}")
    text = f"""
cache_dir: {cache}
models:
  tiny:
    source: {cache / "models" / "tiny"}
    default_variant: gptq
    serve: {{kernel: MarlinLinearKernel, env: {{VLLM_LOGGING_LEVEL: DEBUG}}}}
    kubernetes: {{gpus: 1}}
    variants:
      gptq: {{method: gptq, bits: 4}}
"""
    manifest = parse_manifest(text, tmp_path / "m.yaml")

    async def scenario(cluster: FakeKubernetes) -> dict[str, Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            fleet, _ = kube_fleet(api, KubernetesSettings(namespace=NS), cache, manifest)
            job = fleet.build("tiny", "gptq")
            assert job is not None
            job_name = names.job_name(job.id)
            await until_stored(cluster, JOBS, job_name)
            # the Job's pod: the worker writes the variant into the staging folder, logs, ends
            spec = json.loads((job.log_path.parent / "spec.json").read_text())
            # the pod's paths, and the same perplexity measurement as a local build
            assert spec["source"] == "/var/cache/quantgate/models/tiny"
            assert spec["evaluate"] == {"context": 256, "stride": 128, "base": True, "texts": None}
            staging = cache / Path(spec["output"]).relative_to("/var/cache/quantgate")
            staging.mkdir(parents=True)
            (staging / "config.json").write_text(json.dumps(QUANTIZED))
            cluster.serve_log(NS, f"{job_name}-abcde", WORKER_LOG)
            labels = names.job_labels("tiny", "gptq", job.recipe_hash, job.id)
            await s.pod(f"{job_name}-abcde", labels, {"phase": "Succeeded"})
            await s.job_status(
                job_name, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]
            )
            # then the Deployment controller
            deployment = names.variant_name("tiny", "gptq")
            await until_stored(cluster, DEPLOYMENTS, deployment)
            assert fleet.state("tiny", "gptq").value == "starting"
            await s.deployment_status(deployment, replicas=1, readyReplicas=1)
            for _ in range(200):
                if fleet.state("tiny", "gptq").value == "ready":
                    break
                await asyncio.sleep(0.02)
            described = fleet.status("tiny", "gptq").model_dump(mode="json")
            stored = cluster.stored(DEPLOYMENTS, NS, deployment)
            await fleet.stop("tiny", "gptq")
            scaled = cluster.stored(DEPLOYMENTS, NS, deployment)
            await fleet.aclose()
            return {"described": described, "stored": stored, "scaled": scaled}

    with FakeKubernetes() as cluster:
        out = asyncio.run(scenario(cluster))
    described = out["described"]
    assert described["state"] == "ready"
    assert described["job"]["state"] == "succeeded"
    assert described["report"]["recipe_hash"] == described["recipe_hash"]  # committed here
    assert described["kernel"]["kernel"] == "MarlinLinearKernel"  # pinned by serve.kernel
    [replica] = described["replicas"]
    assert replica["url"] == f"http://{names.variant_name('tiny', 'gptq')}.{NS}.svc:8000"
    container = out["stored"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    env = {e["name"]: e["value"] for e in container["env"]}  # the kernel the admin API says
    assert env["VLLM_DISABLED_KERNELS"] == "MacheteLinearKernel"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG" and env["NCCL_NVLS_ENABLE"] == "0"
    assert "--quantization" in container["args"] or "--quantization" in container.get("command", [])
    assert out["scaled"]["spec"]["replicas"] == 0  # stop scales to zero, keeps the objects


def base_models(cache: Path, **models: str) -> str:
    """A manifest of base models (``method: none``) on the cache volume, each with the extra
    YAML lines given (its serve and kubernetes blocks)."""
    text = f"cache_dir: {cache}\nmodels:\n"
    for name, extra in models.items():
        (cache / "models" / name).mkdir(parents=True, exist_ok=True)
        (cache / "models" / name / "config.json").write_text("{}")
        text += f"  {name}:\n    source: {cache / 'models' / name}\n    default_variant: base\n"
        text += f"{extra}    variants:\n      base: {{method: none}}\n"
    return text


async def serve_once(cluster: FakeKubernetes, s: Scene, fleet: Fleet, model: str) -> Any:
    """Acquire ``model:base`` as the controller marks its Deployment ready; its stored form."""
    lease = asyncio.create_task(fleet.acquire(model, "base"))
    deployment = names.variant_name(model, "base")
    await until_stored(cluster, DEPLOYMENTS, deployment)
    await s.deployment_status(deployment, replicas=1, readyReplicas=1)
    (await asyncio.wait_for(lease, 5)).release()
    return cluster.stored(DEPLOYMENTS, NS, deployment)


def test_a_reload_serves_added_and_changed_models_from_their_new_settings(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    before = base_models(cache, tiny="    serve: {max_model_len: 512}\n")
    after = base_models(
        cache,
        tiny="    serve: {max_model_len: 1024}\n",
        small="    serve: {max_model_len: 2048}\n    kubernetes: {gpus: 1, node_selector: "
        "{pool: gpu}}\n",
    )
    first = parse_manifest(before, tmp_path / "m.yaml")

    async def scenario(cluster: FakeKubernetes) -> list[Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            fleet, _ = kube_fleet(api, KubernetesSettings(namespace=NS), cache, first)
            fleet.reload(parse_manifest(after, tmp_path / "m.yaml"))
            stored = [await serve_once(cluster, s, fleet, m) for m in ("small", "tiny")]
            await fleet.aclose()
            return stored

    with FakeKubernetes() as cluster:
        small, tiny = asyncio.run(scenario(cluster))
    pod = small["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert vllm["args"][vllm["args"].index("--max-model-len") + 1] == "2048"
    (vllm,) = tiny["spec"]["template"]["spec"]["containers"]
    assert vllm["args"][vllm["args"].index("--max-model-len") + 1] == "1024"


def test_a_jobs_log_and_layer_progress_come_from_its_pod(tmp_path: Path) -> None:
    """What /admin/jobs shows of a build on Kubernetes: its pod's log, line by line, once, and
    the layers done as the pod reports them."""
    cache = tmp_path / "cache"
    text = base_models(cache, tiny="").replace("base: {method: none}", "gptq: {method: gptq}")
    manifest = parse_manifest(text.replace("default_variant: base", "default_variant: gptq"),
                              tmp_path / "m.yaml")  # fmt: skip
    started = (
        'loading\nQUANTGATE_PROGRESS {"stage": "quantize", "layers_done": 2, "layers_total": 4}'
    )

    async def scenario(cluster: FakeKubernetes) -> dict[str, Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            fleet, _ = kube_fleet(api, KubernetesSettings(namespace=NS), cache, manifest)
            job = fleet.build("tiny", "gptq", start=False)
            assert job is not None
            job_name = names.job_name(job.id)
            await until_stored(cluster, JOBS, job_name)
            cluster.serve_log(NS, f"{job_name}-abcde", started)
            labels = names.job_labels("tiny", "gptq", job.recipe_hash, job.id)
            await s.pod(f"{job_name}-abcde", labels, {"phase": "Running"})
            for _ in range(200):
                if job.layers_done is not None:
                    break
                await asyncio.sleep(0.02)
            running = job.summary()
            spec = json.loads((job.log_path.parent / "spec.json").read_text())
            staging = cache / Path(spec["output"]).relative_to("/var/cache/quantgate")
            staging.mkdir(parents=True)
            (staging / "config.json").write_text(json.dumps(QUANTIZED))
            cluster.serve_log(NS, f"{job_name}-abcde", WORKER_LOG)  # the rest, then it ends
            complete = [{"type": "Complete", "status": "True"}]
            await s.job_status(job_name, succeeded=1, conditions=complete)
            await job.wait()
            await fleet.aclose()
            return {"running": running, "log": job.log_path.read_text(), "done": job.summary()}

    with FakeKubernetes() as cluster:
        out = asyncio.run(scenario(cluster))
    assert out["running"]["stage"] == "quantize"
    assert out["running"]["progress"] == {"layers_done": 2, "layers_total": 4}
    assert out["done"]["state"] == "succeeded"
    assert out["log"].endswith(f"{started}\n{WORKER_LOG}")  # each line once, in order


def gguf_on_volume(tmp_path: Path) -> tuple[Path, Path]:
    """A cache folder (the volume) with a GGUF file on it."""
    cache = tmp_path / "cache"
    gguf = cache / "models" / "smol.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF and the rest of the file")
    return cache, gguf


async def play_job(
    cluster: FakeKubernetes, s: Scene, cache: Path, job: Any, config: dict[str, Any]
) -> None:
    """The Job's pod: the worker writes ``config`` into the staging folder, logs, succeeds."""
    job_name = names.job_name(job.id)
    await until_stored(cluster, JOBS, job_name)
    spec = json.loads((job.log_path.parent / "spec.json").read_text())
    staging = cache / Path(spec["output"]).relative_to("/var/cache/quantgate")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "config.json").write_text(json.dumps(config))
    cluster.serve_log(NS, f"{job_name}-abcde", WORKER_LOG)
    labels = names.job_labels(job.model, job.variant, job.recipe_hash, job.id)
    await s.pod(f"{job_name}-abcde", labels, {"phase": "Succeeded"})
    await s.job_status(job_name, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])


def test_a_gguf_source_is_imported_by_a_job_into_the_cache_volume(tmp_path: Path) -> None:
    cache, gguf = gguf_on_volume(tmp_path)
    text = f"""
cache_dir: {cache}
models:
  smol:
    source: {gguf}
    default_variant: base
    variants:
      base: {{method: none}}
"""
    manifest = parse_manifest(text, tmp_path / "m.yaml")
    model = manifest.models["smol"]

    async def scenario(cluster: FakeKubernetes) -> dict[str, Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            launcher = KubernetesLauncher(api, KubernetesSettings(namespace=NS), poll_s=0.02)
            volume = CacheVolume("quantgate-cache", cache)
            jobs = JobRunner(VariantStore(cache), lambda spec: [],
                             remote=runtime.remote_job(launcher, volume))  # fmt: skip
            job = jobs.prepare_source("smol", model)
            assert job is not None and job.variant == SOURCE
            # the pod imports the file into the staging folder on the volume, then ends
            await play_job(cluster, s, cache, job, {})
            stored = cluster.stored(JOBS, NS, names.job_name(job.id))
            spec = json.loads((job.log_path.parent / "spec.json").read_text())
            await job.wait()
            await jobs.aclose()
            return {"spec": spec, "job": stored}

    with FakeKubernetes() as cluster:
        out = asyncio.run(scenario(cluster))
    spec = out["spec"]
    assert spec["source"] == "/var/cache/quantgate/models/smol.gguf"
    assert spec["recipe"]["method"] == "import-gguf"
    assert spec["recipe"]["file"] == "/var/cache/quantgate/models/smol.gguf"  # as the pod sees it
    assert spec["output"].startswith("/var/cache/quantgate/.sources/.staging/gguf-")
    container = out["job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1].startswith("/var/cache/quantgate/.jobs/")
    # prepared once, on the volume every quantization Job and vLLM pod mounts
    assert (model.source_path / "report.json").is_file()
    assert model.source_path.parent == cache / ".sources"


def test_a_hub_download_job_gets_the_token_from_the_configured_secret() -> None:
    text = """
cache_dir: /var/cache/quantgate
models:
  llama:
    source: hf://org/private-model@v1
    source_token_env: ORG_HF_TOKEN
    default_variant: base
    variants:
      base: {method: none}
"""
    manifest = parse_manifest(text, Path("/etc/quantgate/m.yaml"))
    model = manifest.models["llama"]
    recipe = model.origin.recipe(model.source_token_env)
    volume = CacheVolume("quantgate-cache", Path("/var/cache/quantgate"))
    spec_file = Path("/var/cache/quantgate/.jobs/j1/spec.json")
    workload = QuantizationWorkload.of("j1", "llama", model, SOURCE, spec_file, volume, recipe)
    settings = KubernetesSettings(namespace=NS, hub_token_secret="hf-token")
    env = _job_env(objects.quantization_job(workload, settings))
    token = next(e for e in env if e.name == "ORG_HF_TOKEN")
    assert token.value_from is not None and token.value_from.secret_key_ref is not None
    assert token.value_from.secret_key_ref.name == "hf-token"
    assert token.value_from.secret_key_ref.key == "token"
    unset = KubernetesSettings(namespace=NS)  # no Secret configured: a public repository
    env = _job_env(objects.quantization_job(workload, unset))
    # the quantizer image sets HF_HUB_OFFLINE=1 (and TRANSFORMERS_OFFLINE=1): a download undoes it
    assert {e.name: e.value for e in env} == {
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"
    }  # fmt: skip


def test_only_the_hub_download_job_reaches_the_hub(tmp_path: Path) -> None:
    text = f"""
cache_dir: {tmp_path}
models:
  tiny:
    source: {tmp_path / "models" / "tiny"}
    default_variant: gptq
    variants:
      gptq: {{method: gptq, bits: 4}}
"""
    manifest = parse_manifest(text, tmp_path / "m.yaml")
    volume = CacheVolume("quantgate-cache", tmp_path)
    spec_file = tmp_path / ".jobs" / "j1" / "spec.json"
    build = QuantizationWorkload.of("j1", "tiny", manifest.models["tiny"], "gptq", spec_file,
                                    volume)  # fmt: skip
    env = _job_env(objects.quantization_job(build, KubernetesSettings(namespace=NS)))
    assert not {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"} & {e.name for e in env}


def _job_env(job: V1Job) -> list[V1EnvVar]:
    assert job.spec is not None and job.spec.template.spec is not None
    return job.spec.template.spec.containers[0].env or []


def test_the_whole_dynamic_flow_pull_build_serve_autoscale_stop(tmp_path: Path) -> None:
    """A GGUF source pulled into the volume by a Job, the variant built by another, served by
    a Deployment that KEDA scales to 3 pods (the gateway keeps that count), then stopped."""
    cache, gguf = gguf_on_volume(tmp_path)
    text = f"""
cache_dir: {cache}
models:
  smol:
    source: {gguf}
    default_variant: gptq
    kubernetes:
      gpus: 1
      autoscaling: {{min_replicas: 1, max_replicas: 4}}
    variants:
      gptq: {{method: gptq, bits: 4, group_size: 64}}
"""
    manifest = parse_manifest(text, tmp_path / "m.yaml")
    settings = KubernetesSettings(namespace=NS, prometheus_url="http://prometheus:9090")

    async def scenario(cluster: FakeKubernetes) -> dict[str, Any]:
        async with ApiClient(Configuration(host=cluster.url)) as api:
            s = Scene(api)
            fleet, jobs = kube_fleet(api, settings, cache, manifest)
            build = fleet.build("smol", "gptq")
            assert build is not None
            await asyncio.sleep(0.1)
            pull = jobs.source_job(manifest.models["smol"])
            assert pull is not None and pull.variant == SOURCE
            imported = {"hidden_size": 576, "intermediate_size": 1536, "model_type": "llama"}
            await play_job(cluster, s, cache, pull, imported)
            await play_job(cluster, s, cache, build, QUANTIZED)
            deployment = names.variant_name("smol", "gptq")
            await until_stored(cluster, DEPLOYMENTS, deployment)
            await s.deployment_status(deployment, replicas=1, readyReplicas=1)
            for _ in range(200):
                if fleet.state("smol", "gptq").value == "ready":
                    break
                await asyncio.sleep(0.02)
            ready = fleet.state("smol", "gptq").value
            # KEDA sees a queue: 3 pods; the gateway, serving on, leaves them be
            await s.apps.patch_namespaced_deployment(deployment, NS, {"spec": {"replicas": 3}})
            await s.deployment_status(deployment, replicas=3, readyReplicas=3)
            scaled = cluster.stored(DEPLOYMENTS, NS, deployment)
            await fleet.stop("smol", "gptq")
            paused = cluster.stored("keda.sh/v1alpha1/scaledobjects", NS, deployment)
            stopped = cluster.stored(DEPLOYMENTS, NS, deployment)
            await fleet.aclose()
            return {"ready": ready, "scaled": scaled, "paused": paused, "stopped": stopped,
                    "pull": cluster.stored(JOBS, NS, names.job_name(pull.id))}  # fmt: skip

    with FakeKubernetes() as cluster:
        out = asyncio.run(scenario(cluster))
    assert out["pull"] is not None  # the source came in through a Job of its own
    assert out["ready"] == "ready"
    assert out["scaled"]["spec"]["replicas"] == 3
    assert out["paused"]["metadata"]["annotations"]["autoscaling.keda.sh/paused-replicas"] == "0"
    assert out["paused"]["spec"]["maxReplicaCount"] == 4
    assert out["stopped"]["spec"]["replicas"] == 0
