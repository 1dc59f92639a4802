"""The Helm chart, read from what `helm template` renders (no cluster).

helm is fetched by `make chart-tools`; without it these tests fail, they never skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from serving.kube.names import MODEL, VARIANT, variant_labels
from serving.kube.objects import vllm_container
from serving.kube.settings import KubernetesSettings
from serving.kube.static import StaticSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import VariantWorkload
from serving.manifest import ServeOptions, parse_manifest
from serving.store import VariantStore

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "quantgate"
HELM = ROOT / ".quantgate" / "tools" / "helm"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
BROKEN = sorted((ROOT / "helm" / "tests").glob("bad-*.yaml"))
NAMESPACE = "quantgate"

Object = dict[str, Any]

LAUNCHER_RULES = {
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get", "list", "watch"},
    ("apps", "deployments/scale"): {"get", "update", "patch"},
    # with keda.prometheusUrl: the ScaledObjects of autoscaled variants
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "update", "patch", "delete"},
}


def helm_template(*values: Path) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"helm not found at {HELM}: run `make chart-tools`")
    command = [str(HELM), "template", "qg", str(CHART), "--namespace", NAMESPACE]
    command += ["--kube-version", "1.30.0"]
    for path in values:
        command += ["-f", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


@cache
def render(*values: Path) -> tuple[Object, ...]:
    result = helm_template(*values)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def example(name: str) -> Path:
    return CHART / "examples" / f"{name}.yaml"


def values_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def find(objects: tuple[Object, ...], kind: str, component: str | None = None) -> list[Object]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or labels(o).get("app.kubernetes.io/component") == component)
    ]


def one(objects: tuple[Object, ...], kind: str, component: str | None = None) -> Object:
    (found,) = find(objects, kind, component)
    return found


def manifest_config(objects: tuple[Object, ...]) -> Object:
    (found,) = [c for c in find(objects, "ConfigMap") if "manifest.yaml" in c["data"]]
    return found


def labels(obj: Object) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("labels", {})
    return found


def container(deployment: Object, name: str) -> Object:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    assert isinstance(found, dict)
    return found


def env_of(container: Object) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def rules(role: Object) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_renders_a_valid_manifest(path: Path) -> None:
    objects = render(path)
    config = manifest_config(objects)
    text = config["data"]["manifest.yaml"]
    manifest = parse_manifest(text, Path("/etc/quantgate/manifest.yaml"))
    assert manifest.model_dump(mode="json") == parse_manifest(
        yaml.safe_dump(values_of(path)["manifest"]), Path("/etc/quantgate/manifest.yaml")
    ).model_dump(mode="json")
    assert all(len(o["metadata"]["name"]) <= 63 for o in objects)


def test_dynamic_gateway_mounts_the_manifest_and_reads_the_admin_key_from_the_secret() -> None:
    objects = render(example("dynamic"))
    gateway = one(objects, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    main = container(gateway, "gateway")
    assert main["command"] == ["quantgate"]
    assert main["args"][:2] == ["serve", "/etc/quantgate/manifest.yaml"]
    assert {"mountPath": "/etc/quantgate", "name": "config", "readOnly": True} in main[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = manifest_config(objects)
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]
    assert "manifest.yaml" in config["data"]
    env = env_of(main)
    assert env["QUANTGATE_ADMIN_KEY"] == {
        "secretKeyRef": {"name": "quantgate-admin", "key": "admin-key"}
    }
    assert not find(objects, "Secret"), "existingSecret: the chart makes no Secret of its own"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_pod_gets_service_link_env_vars(path: Path) -> None:
    """A Service named quantgate would set QUANTGATE_PORT=tcp://...: the gateway's port setting."""
    pods = [o["spec"] for o in render(path) if o["kind"] == "Pod"]
    pods += [
        o["spec"]["template"]["spec"] for o in render(path) if o["kind"] in ("Deployment", "Job")
    ]
    assert pods
    assert all(pod["enableServiceLinks"] is False for pod in pods)


def test_gateways_that_scale_out_share_limits_in_redis_and_the_ledger_in_postgres() -> None:
    objects = render(example("single-gpu"))  # an HPA of 2 to 6 gateways
    assert one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 2
    env = env_of(container(one(objects, "Deployment", "gateway"), "gateway"))
    assert env["QUANTGATE_REDIS_URL"] == {"secretKeyRef": {"name": "llm-redis", "key": "url"}}
    assert env["QUANTGATE_LEDGER_URL"] == {"secretKeyRef": {"name": "llm-ledger", "key": "url"}}
    single = env_of(container(one(render(example("cpu-demo")), "Deployment", "gateway"), "gateway"))
    assert "QUANTGATE_REDIS_URL" not in single and "QUANTGATE_LEDGER_URL" not in single


def test_client_keys_come_from_a_secret_as_the_files_the_manifest_names() -> None:
    objects = render(example("single-gpu"))
    pod = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "client-keys"]
    assert volume["secret"] == {"secretName": "llm-client-keys", "defaultMode": 0o440}
    (mount,) = [m for m in container(one(objects, "Deployment", "gateway"), "gateway")
                ["volumeMounts"] if m["name"] == "client-keys"]  # fmt: skip
    assert mount == {
        "name": "client-keys",
        "mountPath": "/var/run/quantgate/keys",
        "readOnly": True,
    }
    manifest = values_of(example("single-gpu"))["manifest"]
    files = [k["key_file"] for k in manifest["auth"]["keys"]]
    assert all(f.startswith(mount["mountPath"] + "/") for f in files)
    args = container(one(objects, "Deployment", "gateway"), "gateway")["args"]
    assert "--watch" in args  # a rotated key is read again without a restart


def vllm_metric_names() -> set[str]:
    """The metric names vLLM registers, from the installed vLLM's own source (a counter is
    exported with ``_total``, a histogram with ``_bucket``, ``_sum`` and ``_count``)."""
    found = sorted(ROOT.glob(".venv-vllm/lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))
    if not found:
        pytest.fail("vLLM is not installed in .venv-vllm: run `make install`")
    text = found[0].read_text()
    names = set(re.findall(r'"(vllm:[a-z_]+)"', text))
    return {n + end for n in names for end in ("", "_total", "_bucket", "_sum", "_count")}


def test_the_dashboards_vllm_row_reads_metrics_vllm_exports_through_the_pod_monitor() -> None:
    dashboard = json.loads((CHART / "dashboards" / "quantgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"vllm:[a-z_]+", e)}
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= used
    assert used <= vllm_metric_names(), used - vllm_metric_names()
    (monitor,) = find(render(example("dynamic")), "PodMonitor")
    relabels = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {r["targetLabel"] for r in relabels} >= {"model", "variant", "namespace"}
    selector = monitor["spec"]["selector"]["matchExpressions"]
    assert {"key": "quantgate.io/model", "operator": "Exists"} in selector
    # the pods it selects: the fleet's vLLM Deployments and the chart's static backends
    dynamic = variant_labels("tiny", "gptq", "abc123")
    assert dynamic["app.kubernetes.io/component"] == "server" and "quantgate.io/model" in dynamic
    for static in find(render(example("single-gpu")), "Deployment", "vllm"):
        labels = static["spec"]["template"]["metadata"]["labels"]
        assert "quantgate.io/model" in labels and labels["app.kubernetes.io/component"] == "vllm"


def test_a_chart_made_secret_holds_the_admin_key_the_gateway_reads() -> None:
    objects = render(example("cpu-demo"))
    ref = env_of(container(one(objects, "Deployment", "gateway"), "gateway"))["QUANTGATE_ADMIN_KEY"]
    secret = one(objects, "Secret")
    assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert len(secret["data"][ref["secretKeyRef"]["key"]]) >= 40  # base64 of a random key


def test_dynamic_gateway_tells_the_kubernetes_launcher_where_and_what_to_run() -> None:
    objects = render(example("dynamic"))
    gateway = one(objects, "Deployment", "gateway")
    env = env_of(container(gateway, "gateway"))
    claim = one(objects, "PersistentVolumeClaim")
    assert env["QUANTGATE_LAUNCHER"] == "kubernetes"
    assert env["QUANTGATE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["QUANTGATE_VLLM_IMAGE"] == "registry.example.com/quantgate/vllm:0.1.0"
    assert env["QUANTGATE_QUANTIZER_IMAGE"] == "registry.example.com/quantgate/quantizer:0.1.0"
    assert env["QUANTGATE_CACHE_PVC"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    launcher = yaml.safe_load(manifest_config(objects)["data"]["launcher.yaml"])
    assert launcher["vllm"]["nodeSelector"] == {"node-pool": "gpu-serving"}
    assert launcher["quantizer"]["gpus"] == 1


def test_a_dynamic_gateway_is_replaced_not_rolled_so_two_never_run_at_once() -> None:
    """A stopping gateway scales its vLLM Deployments to zero and deletes its Jobs: under a
    rolling update it would do so while the new one serves."""
    dynamic = one(render(example("dynamic")), "Deployment", "gateway")
    assert dynamic["spec"]["strategy"] == {"type": "Recreate"}
    static = one(render(example("single-gpu")), "Deployment", "gateway")  # stateless: it rolls
    assert static["spec"].get("strategy", {"type": "RollingUpdate"})["type"] == "RollingUpdate"


def test_dynamic_role_grants_exactly_what_the_launcher_needs() -> None:
    objects = render(example("dynamic"))
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert rules(role) == LAUNCHER_RULES
    gateway = one(objects, "Deployment", "gateway")
    env = env_of(container(gateway, "gateway"))
    assert env["QUANTGATE_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


def test_service_monitor_scrapes_the_gateway_service() -> None:
    objects = render(example("single-gpu"))
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service", "gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels(service).items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert labels(monitor)["release"] == "kube-prometheus-stack"


def test_network_policy_lets_only_the_gateway_reach_vllm() -> None:
    objects = render(example("multi-gpu-tp"))
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objects, "NetworkPolicy")}
    backends = policies["qg-quantgate-backends"]
    gateway_pod = one(objects, "Deployment", "gateway")["spec"]["template"]["metadata"]
    (peer,) = backends["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway_pod["labels"].items()
    for deployment in find(objects, "Deployment", "vllm"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert backends["podSelector"]["matchLabels"].items() <= pod_labels.items()
    dynamic = {
        p["metadata"]["name"]: p["spec"] for p in find(render(example("dynamic")), "NetworkPolicy")
    }
    assert dynamic["qg-quantgate-backends"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "quantgate"
    }


MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def metrics_rules(policy: Object) -> list[Object]:
    """The policy's ingress rules that let Prometheus in: not from the gateway's pods."""
    return [r for r in policy["spec"]["ingress"]
            if not any("podSelector" in peer for peer in r.get("from", []))]  # fmt: skip


def test_network_policy_lets_prometheus_scrape_vllm_and_the_gateway(tmp_path: Path) -> None:
    """KEDA's queue trigger and the dashboard's vLLM row need vLLM's own samples."""
    objects = render(example("dynamic"))  # a PodMonitor, a ServiceMonitor, gatewayFrom empty
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    (rule,) = metrics_rules(policies["qg-quantgate-backends"])
    assert rule == {"ports": [{"port": "http", "protocol": "TCP"}], "from": MONITORING}
    # the port the PodMonitor scrapes, named so on every vLLM pod
    (monitor,) = find(objects, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert objects_port_name() == "http"
    # the gateway takes anyone already: no rule of its own
    assert len(policies["qg-quantgate-gateway"]["spec"]["ingress"]) == 1
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"networkPolicy": {
        "gatewayFrom": [{"podSelector": {"matchLabels": {"role": "client"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]}}))  # fmt: skip
    objects = render(example("dynamic"), values)
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    gateway = policies["qg-quantgate-gateway"]["spec"]["ingress"]
    obs = [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]
    assert gateway[1] == {"ports": [{"port": "http", "protocol": "TCP"}], "from": obs}
    assert metrics_rules(policies["qg-quantgate-backends"])[0]["from"] == obs
    # without the monitors, only the gateway gets in
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"metrics": {"serviceMonitor": {"enabled": False},
                                               "vllmPodMonitor": {"enabled": False}}}))  # fmt: skip
    policies = {p["metadata"]["name"]: p for p in find(render(example("dynamic"), values, off),
                                                       "NetworkPolicy")}  # fmt: skip
    assert not metrics_rules(policies["qg-quantgate-backends"])
    assert len(policies["qg-quantgate-gateway"]["spec"]["ingress"]) == 1


def objects_port_name() -> str:
    """The name of the port vLLM listens on in the pods the launcher creates."""
    manifest = parse_manifest(yaml.safe_dump(values_of(example("dynamic"))["manifest"]),
                              Path("/etc/quantgate/m.yaml"))  # fmt: skip
    volume = CacheVolume("cache", manifest.cache_dir)
    model = manifest.models["qwen2.5-7b"]
    workload = VariantWorkload.of("qwen2.5-7b", model, "base", model.source_path, volume)
    ports = vllm_container(workload, KubernetesSettings(), gpus=0).ports or []
    return str(ports[0].name)


def test_static_role_only_reads() -> None:
    verbs = set().union(*rules(one(render(example("single-gpu")), "Role")).values())
    assert verbs == {"get", "list", "watch"}


def test_static_gateway_finds_the_charts_backends_by_their_labels_and_creates_nothing() -> None:
    objects = render(example("single-gpu"))
    gateway = one(objects, "Deployment", "gateway")
    env = env_of(container(gateway, "gateway"))
    assert env["QUANTGATE_LAUNCHER"] == "kubernetes-static"
    for unused in ("QUANTGATE_VLLM_IMAGE", "QUANTGATE_QUANTIZER_IMAGE", "QUANTGATE_CACHE_PVC",
                   "QUANTGATE_LAUNCHER_CONFIG", "QUANTGATE_MAX_CONCURRENT_JOBS"):  # fmt: skip
        assert unused not in env
    selector = StaticSettings(backend_selector=env["QUANTGATE_BACKEND_SELECTOR"]).labels()
    assert selector["app.kubernetes.io/instance"] == "qg"  # this release's backends only
    services = find(objects, "Service", "vllm")
    backends = values_of(example("single-gpu"))["static"]["backends"]
    for backend in backends:  # what the gateway lists Services by, for each backend
        wanted = {**selector, MODEL: backend["model"], VARIANT: backend["variant"]}
        (service,) = [s for s in services if wanted.items() <= labels(s).items()]
        (deployment,) = [d for d in find(objects, "Deployment", "vllm")
                         if d["metadata"]["name"] == service["metadata"]["name"]]  # fmt: skip
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= labels(one(objects, "Service", "gateway")).items()
    granted = rules(one(objects, "Role"))  # what it reads: Services, Deployments, pods, logs
    assert {"list"} <= granted[("", "services")] and {"get"} <= granted[("apps", "deployments")]
    assert {"list"} <= granted[("", "pods")] and {"get"} <= granted[("", "pods/log")]
    # a changed list of backends rolls the gateway: a refused variant is looked up anew
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/backends" in annotations


@pytest.mark.parametrize("name", ["single-gpu", "multi-gpu-tp"])
def test_static_mode_renders_one_vllm_deployment_per_backend(name: str) -> None:
    values = values_of(example(name))
    objects = render(example(name))
    deployments = find(objects, "Deployment", "vllm")
    services = find(objects, "Service", "vllm")
    assert len(deployments) == len(services) == len(values["static"]["backends"])
    for backend, deployment in zip(values["static"]["backends"], deployments, strict=True):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["quantgate.io/model"] == backend["model"]
        assert pod_labels["quantgate.io/variant"] == backend["variant"]
        gpus = backend.get("gpus", values["vllm"].get("gpus", 1))
        tp = backend.get("tensorParallelSize", values["vllm"].get("tensorParallelSize", 1))
        vllm = container(deployment, "vllm")
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert vllm["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert vllm["command"] == ["vllm", "serve"]
        assert f"--tensor-parallel-size={tp}" in vllm["args"]
        assert deployment["spec"]["replicas"] == backend.get("replicas", 1)
        (service,) = [
            s for s in services if s["metadata"]["name"] == deployment["metadata"]["name"]
        ]
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_static_args_follow_the_manifest() -> None:
    objects = render(example("multi-gpu-tp"))
    deployments = {
        labels(d)["quantgate.io/variant"]: container(d, "vllm")["args"]
        for d in find(objects, "Deployment", "vllm")
    }
    base, awq = deployments["base"], deployments["awq-w4a16"]
    assert base[0] == "/var/cache/quantgate/models/Meta-Llama-3.1-70B-Instruct"
    # The default variant also answers to the bare model name, as the local launcher does.
    assert base[1:3] == ["--served-model-name", "llama-3.1-70b:base"]
    assert awq[1:4] == ["--served-model-name", "llama-3.1-70b:awq-w4a16", "llama-3.1-70b"]
    for args in (base, awq):
        assert "--max-model-len=16384" in args and "--dtype=float16" in args
    assert awq[-1] == "--enable-prefix-caching"


def test_static_defaults_match_the_manifest_defaults(tmp_path: Path) -> None:
    """A model without `serve` gets the chart's fallbacks: they must be ServeOptions' defaults."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "mode": "static",
                "manifest": {
                    "models": {
                        "m": {
                            "source": "/var/cache/quantgate/models/m",
                            "default_variant": "base",
                            "variants": {"base": {"method": "none"}},
                        }
                    }
                },
                "vllm": {"gpus": 0},
                "static": {"backends": [{"model": "m", "variant": "base"}]},
            }
        )
    )
    vllm = container(one(render(values), "Deployment", "vllm"), "vllm")
    defaults = ServeOptions()
    assert f"--max-model-len={defaults.max_model_len}" in vllm["args"]
    assert f"--dtype={defaults.dtype}" in vllm["args"]
    assert env_of(vllm)["VLLM_CPU_KVCACHE_SPACE"] == str(defaults.cpu_kv_cache_gib)
    assert "nvidia.com/gpu" not in vllm["resources"].get("limits", {})


def test_static_fp8_serves_the_source_quantized_at_load(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    variants = {"base": {"method": "none"}, "fp8": {"method": "fp8"}}
    model = {"source": "/var/cache/quantgate/models/m", "default_variant": "base"}
    values.write_text(
        yaml.safe_dump(
            {
                "mode": "static",
                "manifest": {"models": {"m": {**model, "variants": variants}}},
                "static": {"backends": [{"model": "m", "variant": v} for v in variants]},
            }
        )
    )
    args = {
        labels(d)["quantgate.io/variant"]: container(d, "vllm")["args"]
        for d in find(render(values), "Deployment", "vllm")
    }
    assert args["fp8"][0] == args["base"][0] == "/var/cache/quantgate/models/m"
    assert "--quantization=fp8" in args["fp8"]
    assert not any(a.startswith("--quantization") for a in args["base"])


@pytest.mark.parametrize("name", ["single-gpu", "multi-gpu-tp"])
def test_static_backends_serve_a_built_variant_by_its_name(name: str) -> None:
    values = values_of(example(name))
    manifest = parse_manifest(yaml.safe_dump(values["manifest"]), Path("/etc/quantgate/m.yaml"))
    store = VariantStore(manifest.cache_dir)
    served = {}
    for dep in find(render(example(name)), "Deployment", "vllm"):
        labels = dep["metadata"]["labels"]
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        served[(labels["quantgate.io/model"], labels["quantgate.io/variant"])] = args
    for backend in values["static"]["backends"]:
        key = (backend["model"], backend["variant"])
        model = manifest.models[key[0]]
        want = model.source if not model.variants[key[1]].needs_build else store.by_name(*key)
        assert str(want) in served[key], (key, served[key])  # the gateway keeps that link


def test_pod_labels_join_the_charts_own_which_win_a_clash(tmp_path: Path) -> None:
    """A podLabels key the chart also sets keeps the chart's value: the Deployments select
    their pods by those labels, and the gateway finds its backends by them."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "gateway": {"podLabels": {"team": "gw", "app.kubernetes.io/component": "mine"}},
        "vllm": {"podLabels": {"team": "llm", "quantgate.io/model": "mine"}},
    }))  # fmt: skip
    deployments = find(render(example("single-gpu"), values), "Deployment")
    assert len(deployments) == 3  # the gateway and two backends
    for dep in deployments:
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert pod_labels["team"] in ("gw", "llm") and "mine" not in pod_labels.values()
        assert (
            labels(dep)["app.kubernetes.io/component"] == pod_labels["app.kubernetes.io/component"]
        )


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_values_fail_with_a_clear_message(path: Path) -> None:
    (expect,) = re.findall(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    result = helm_template(example("cpu-demo"), path)
    assert result.returncode != 0
    assert expect in result.stderr


def test_the_default_values_lint_strict_and_serve_nothing_until_a_manifest_comes() -> None:
    (config,) = [c for c in find(render(), "ConfigMap") if "manifest.yaml" in c.get("data", {})]
    assert yaml.safe_load(config["data"]["manifest.yaml"])["models"] == {}
    lint = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_values_schema_carries_the_current_manifest_schema() -> None:
    spec = importlib.util.spec_from_file_location(
        "manifest_schema", ROOT / "helm" / "tools" / "manifest_schema.py"
    )
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    current = json.loads((CHART / "values.schema.json").read_text())
    assert tool.updated(current) == current, "run .venv/bin/python helm/tools/manifest_schema.py"


def test_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    dashboard = json.loads((CHART / "dashboards" / "quantgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"quantgate_[a-z_]+", e)}
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.watch_jobs(list)
    metrics.watch_replicas(
        lambda: [{"model": "m", "variant": "v", "state": "ready", "circuit": "closed"}]
    )
    metrics.watch_residency(lambda: [("m", "v", "awake")])
    metrics.watch_kernels(
        lambda: [{"model": "m", "variant": "v", "kernel": "k", "switches": 1, "streams": 1.0}]
    )
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    families = {f.name: suffixes[f.type] for f in metrics.registry.collect()}
    exported = {name + suffix for name, ends in families.items() for suffix in ends}
    assert used <= exported
    unused = [f for f, ends in families.items() if not {f + end for end in ends} & used]
    assert not unused, f"metrics without a panel: {unused}"
    (board,) = [
        c for c in find(render(example("dynamic")), "ConfigMap") if "quantgate.json" in c["data"]
    ]
    assert json.loads(board["data"]["quantgate.json"]) == dashboard
    assert labels(board)["grafana_dashboard"] == "1"
