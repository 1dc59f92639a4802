"""Static mode: the chart runs the vLLM backends; the gateway finds them and creates nothing.

The chart (``mode: static``) renders a Deployment and a Service of the same name per
``static.backends`` entry, labelled ``quantgate.io/model`` and ``quantgate.io/variant``, and
gives the gateway a Role that only reads. With ``QUANTGATE_LAUNCHER=kubernetes-static`` a
variant's one replica is its backend's Service, found by those labels and the release's own
(``QUANTGATE_BACKEND_SELECTOR``) in the namespace, and ready once the Deployment reports a ready
replica of its current spec (its readiness probe is vLLM's ``/health``); one that is not ready
in time, or cannot start, answers 503 ``backend_not_ready`` until the first request after
``RETRY_S`` asks again, while Kubernetes keeps restarting its pods. Nothing is created,
scaled or deleted: stopping a variant (idle, reload, shutdown) only stops routing to it. A
variant without a backend is refused, naming the entry to add; a job (a build, a source to
import or download) is refused instead of started: static mode serves what the chart runs. FP8,
which vLLM quantizes at load, is served unmeasured, unless its quality budget needs the measure.

    backends = StaticBackends(api, KubernetesSettings(), StaticSettings().labels())
    open_fleet(..., scheduled=scheduled(backends))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from kubernetes.aio.client import ApiClient, CoreV1Api, V1Service
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.build import BuildSpec, OnProgress
from serving.errors import BackendFailed, BackendNotReady, JobFailed, VariantUnsupported
from serving.fleet import Scheduled
from serving.job import SOURCE, Job
from serving.kube import names, pods
from serving.kube.launcher import API_ERRORS, CALL_TIMEOUT_S, KubernetesLauncher
from serving.kube.settings import KubernetesSettings
from serving.launcher import LaunchSpec, Server
from serving.manifest import Model

LABEL = r"[A-Za-z0-9][-A-Za-z0-9_./]*=[-A-Za-z0-9_.]*"
RETRY_S = 30.0  # a backend not ready (or not found by the API) is asked again after this
NO_SLEEP = (
    "sleep mode is driven only for local vLLM processes: a static backend's pods are the "
    "chart's, and keep their GPUs"
)


class StaticSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    backend_selector: str = Field(
        "app.kubernetes.io/component=vllm",
        pattern=rf"^({LABEL}(,{LABEL})*)?$",
        description="Labels (key=value,...) every backend Service of this release carries, "
        "besides quantgate.io/model and quantgate.io/variant (the chart sets its release's).",
    )

    def labels(self) -> dict[str, str]:
        pairs = (pair.split("=", 1) for pair in self.backend_selector.split(",") if pair)
        return {key: value for key, value in pairs}


class StaticBackends:
    """The chart's vLLM backends in the gateway's namespace: found and followed, never changed.

    ``address``: how the gateway reaches a backend's Service (default: its cluster DNS name);
    ``retry_s``: how long a backend that could not be used stays failed before a request asks
    again (Kubernetes keeps restarting its pods meanwhile).
    """

    def __init__(
        self,
        api: ApiClient,
        settings: KubernetesSettings,
        selector: dict[str, str],
        poll_s: float = 2.0,
        address: Callable[[V1Service], str] | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        self.namespace = settings.namespace
        self.retry_s = retry_s
        self._core = CoreV1Api(api)
        self._follow = KubernetesLauncher(api, settings, poll_s)  # reads Deployments and pods
        self._selector = selector
        self.address = address or self.service_url

    def labels(self, model: str, variant: str) -> dict[str, str]:
        """The labels of the Service that serves ``model:variant``."""
        exact = {names.MODEL: names.label_value(model), names.VARIANT: names.label_value(variant)}
        return {**self._selector, **exact}

    async def find(self, model: str, variant: str) -> V1Service:
        """The Service of the variant's backend; VariantUnsupported when the chart runs none."""
        labels = self.labels(model, variant)
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        try:
            listed = await self._core.list_namespaced_service(
                self.namespace, label_selector=selector, _request_timeout=CALL_TIMEOUT_S
            )
        except API_ERRORS as exc:
            raise BackendFailed(
                f"cannot look up the backend of {model}:{variant}: {pods.describe(exc)}"
            ) from exc
        found = [s for s in listed.items if _carries(s, labels)]  # not every server filters
        if not found:
            raise VariantUnsupported(
                f"{model}:{variant} has no vLLM backend: in static mode the gateway serves only "
                f"the chart's backends, and no Service in namespace {self.namespace} has the "
                f"labels {selector}. Add {{model: {model}, variant: {variant}}} to "
                "static.backends in the chart's values and upgrade the release."
            )
        if len(found) > 1:
            listing = ", ".join(sorted(_name(s) for s in found))
            raise BackendFailed(f"{model}:{variant} has {len(found)} backends ({listing}): "
                                "keep one entry per variant in static.backends")  # fmt: skip
        return found[0]

    async def wait_ready(self, service: V1Service, what: str, timeout_s: float) -> None:
        """Until the Deployment of the Service's name has a ready replica (BackendFailed: it
        cannot start, or not in time, with its pods' state and log)."""
        selector = dict((service.spec.selector if service.spec else None) or {})
        await self._follow.wait_deployment(_name(service), selector, what, timeout_s)

    def service_url(self, service: V1Service) -> str:
        """``http://<name>.<namespace>.svc:<port>``: the port named http, else the first."""
        ports = (service.spec.ports if service.spec else None) or []
        port = next((p.port for p in ports if p.name == "http"), ports[0].port if ports else 80)
        return f"http://{_name(service)}.{self.namespace}.svc:{port}"


class StaticServer:
    """A variant's chart backend with the face of a local vLLM process (``Server``)."""

    def __init__(self, backends: StaticBackends, spec: LaunchSpec) -> None:
        self.spec = spec
        self._backends = backends
        self._url = ""
        self._stopped = asyncio.Event()
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.pid: int | None = None  # no local process

    @property
    def url(self) -> str:
        return self._url

    def alive(self) -> bool:
        return bool(self._url) and not self._stopped.is_set()

    async def start(self, timeout_s: float) -> None:
        """Find the backend and wait until it is ready; no API call here writes anything."""
        model, variant = self.spec.model, self.spec.variant
        self.started_at, self.ready_at = time.time(), None
        self._stopped.clear()
        try:
            service = await self._backends.find(model, variant)
            what = f"vLLM for {model}:{variant} (backend {_name(service)})"
            await self._backends.wait_ready(service, what, timeout_s)
        except BackendFailed as exc:  # the chart's pods, which Kubernetes keeps restarting
            retry_s = self._backends.retry_s
            raise BackendNotReady(f"{exc}; the next request after {retry_s:.0f} s asks again",
                                  exc.log_tail, retry_s) from exc  # fmt: skip
        self._url, self.ready_at = self._backends.address(service), time.time()

    async def wait(self) -> int:
        """Returns only once stopped: Kubernetes restarts a crashed vLLM pod by itself."""
        await self._stopped.wait()
        return 0

    async def stop(self, grace_s: float = 15.0) -> None:
        """Stop using the backend; its pods are the chart's and keep running."""
        self._stopped.set()

    async def sleep(self, level: int) -> None:
        raise BackendFailed(NO_SLEEP)

    async def wake_up(self, level: int) -> None:
        raise BackendFailed(NO_SLEEP)


def scheduled(backends: StaticBackends) -> Scheduled:
    """What ``open_fleet`` runs on: the backends as replicas, every job refused (a variant
    vLLM quantizes at load, FP8, is served unmeasured unless it has a quality budget)."""
    return Scheduled(launch(backends), refuse_job, runs_jobs=False)


def launch(backends: StaticBackends) -> Callable[[LaunchSpec], Server]:
    """The fleet's ``launch``: replica 0 of a variant is its backend; there is no other."""

    def make(spec: LaunchSpec) -> Server:
        if spec.replica > 0:
            raise BackendFailed(
                f"{spec.model}:{spec.variant}: in static mode a variant is one backend of the "
                "chart; set serve.replicas to 1 and the backend's replicas in static.backends"
            )
        return StaticServer(backends, spec)

    return make


async def refuse_job(
    job: Job, model: Model, build: BuildSpec, on_progress: OnProgress
) -> dict[str, Any] | None:
    """The fleet's ``remote`` in static mode: every job is refused, no Job is created."""
    label = f"{job.model}:{job.variant}"
    if job.variant == SOURCE:
        why = (f"the source {model.source} of {job.model} is imported or downloaded only in "
               "dynamic mode: prepare it there first, or give the model a checkpoint folder "
               "on the cache volume as its source")  # fmt: skip
    elif build.served:
        why = (f"{label}'s quality budget (max_ppl_increase) needs its perplexity, measured "
               "through its server only in dynamic mode: measure it there first, or drop its "
               "max_ppl_increase")  # fmt: skip
    else:
        why = (f"{label} is not built on the cache volume ({build.final}): build it in dynamic "
               f"mode first (a request for it, or POST /admin/variants/{job.model}/"
               f"{job.variant}/build), then switch the release to static mode")  # fmt: skip
    raise JobFailed(f"static mode serves what the chart runs and starts no Job: {why}")


def _name(service: V1Service) -> str:
    return str(service.metadata.name) if service.metadata else "?"


def _carries(service: V1Service, labels: dict[str, str]) -> bool:
    have = (service.metadata.labels if service.metadata else None) or {}
    return all(have.get(k) == v for k, v in labels.items())
