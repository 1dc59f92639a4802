"""Running variants and quantization jobs on Kubernetes, through ``kubernetes.aio``.

A variant is a Deployment and a Service of the same name; it is ready when the Deployment
reports a ready replica of its current spec, and stopped by scaling it to zero (the objects
stay, so the next start reuses them). A quantization job is a Job that runs the worker on a
spec in the cache volume; its outcome is read from the Job's status, its pod's log is followed
line by line (``pod_log``), and a failure is reported with the tail of that log. Every API
error becomes a BackendFailed (variants) or a JobFailed (jobs), so the fleet records it like a
local failure.

Objects are written with server-side apply (field manager ``quantgate``), which creates
them, or updates them and drops fields an earlier version set. An API server that
answers 404 to an apply (some fakes do) gets a plain create instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes.aio.client import (
    ApiClient,
    AppsV1Api,
    BatchV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1Deployment,
    V1Pod,
)
from kubernetes.aio.client.exceptions import ApiException

from serving.errors import BackendFailed, JobFailed
from serving.kube import names, objects, pod_log, pods
from serving.kube.settings import KubernetesSettings
from serving.kube.workload import QuantizationWorkload, VariantWorkload
from serving.worker.protocol import RESULT

FIELD_MANAGER = "quantgate"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
CALL_TIMEOUT_S = 30
LOG_LINES = 20
FOLLOW_LINES = 1000  # a Job pod's log is read this much at a time while it runs
API_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)

OnLine = Callable[[str], None]
ApiCall = Callable[..., Awaitable[object]]


class KubernetesLauncher:
    def __init__(self, api: ApiClient, settings: KubernetesSettings, poll_s: float = 2.0) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._apps = AppsV1Api(api)
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._batch = BatchV1Api(api)
        self._poll_s = poll_s

    # -- variants ------------------------------------------------------------------------
    def backend_url(self, model: str, variant: str) -> str:
        return f"http://{names.variant_name(model, variant)}.{self.namespace}.svc:{objects.PORT}"

    async def ensure_variant(self, w: VariantWorkload, replicas: int = 1) -> None:
        """Create or update the variant's Deployment (at ``replicas``) and Service; an
        autoscaled variant's replica count is its ScaledObject's (KEDA), resumed here."""
        autoscaled = w.kube.autoscaling is not None
        if autoscaled and not self.settings.prometheus_url:
            raise BackendFailed(
                f"{w.model}:{w.variant} autoscales on vLLM's queue, which KEDA reads from "
                "Prometheus: set QUANTGATE_PROMETHEUS_URL (the chart's autoscaling.prometheusUrl)"
            )
        async with _failing_as(BackendFailed, f"cannot create {w.model}:{w.variant}"):
            dep = objects.deployment(w, self.settings, None if autoscaled else replicas)
            svc = objects.service(w, self.settings)
            apps, core = self._apps, self._core
            await self._apply(
                apps.patch_namespaced_deployment, apps.create_namespaced_deployment, dep, w.name
            )
            await self._apply(
                core.patch_namespaced_service, core.create_namespaced_service, svc, w.name
            )
            if autoscaled:
                await self._apply(self._keda_patch, self._keda_create,
                                  objects.scaled_object(w, self.settings), w.name)  # fmt: skip
                await self._pause(w.name, None)

    async def _keda_patch(
        self, name: str, namespace: str, body: dict[str, Any], **kw: Any
    ) -> object:
        return await self._custom.patch_namespaced_custom_object(
            objects.KEDA_GROUP, objects.KEDA_VERSION, namespace, objects.KEDA_PLURAL, name, body,
            **kw,
        )  # fmt: skip

    async def _keda_create(self, namespace: str, body: dict[str, Any], **kw: Any) -> object:
        return await self._custom.create_namespaced_custom_object(
            objects.KEDA_GROUP, objects.KEDA_VERSION, namespace, objects.KEDA_PLURAL, body, **kw
        )

    async def _pause(self, name: str, replicas: int | None) -> None:
        """Hold the ScaledObject's target at ``replicas`` pods (KEDA's paused-replicas), or let
        KEDA scale it again (None)."""
        value = None if replicas is None else str(replicas)
        await self._keda_patch(
            name, self.namespace, {"metadata": {"annotations": {objects.KEDA_PAUSED: value}}},
            _content_type=MERGE, _request_timeout=CALL_TIMEOUT_S,
        )  # fmt: skip

    async def _apply(self, patch: ApiCall, create: ApiCall, body: object, name: str) -> None:
        """Server-side apply; a plain create where the API server answers 404 to it."""
        try:
            await patch(
                name,
                self.namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
                _request_timeout=CALL_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            await create(
                self.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=CALL_TIMEOUT_S
            )

    async def scale(
        self, model: str, variant: str, replicas: int, autoscaled: bool = False
    ) -> None:
        """Set the variant's replicas; 0 frees its pods (and GPUs) and keeps its objects (an
        autoscaled variant's ScaledObject is paused at 0 first, so KEDA keeps it there)."""
        async with _failing_as(BackendFailed, f"cannot scale {model}:{variant}"):
            if autoscaled:
                await self._pause(names.variant_name(model, variant), replicas)
            await self._apps.patch_namespaced_deployment(
                names.variant_name(model, variant),
                self.namespace,
                {"spec": {"replicas": replicas}},
                field_manager=FIELD_MANAGER,
                _request_timeout=CALL_TIMEOUT_S,
            )

    async def delete(self, model: str, variant: str) -> None:
        """Remove the variant's Deployment (its pods go with it) and Service; absent is fine."""
        name = names.variant_name(model, variant)
        async with _failing_as(BackendFailed, f"cannot delete {model}:{variant}"):
            for remove in (
                self._apps.delete_namespaced_deployment,
                self._core.delete_namespaced_service,
            ):
                try:
                    await remove(
                        name,
                        self.namespace,
                        propagation_policy="Background",
                        _request_timeout=CALL_TIMEOUT_S,
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    async def ready_replicas(self, model: str, variant: str) -> int | None:
        """Ready replicas of the variant's Deployment; None when there is no Deployment."""
        async with _failing_as(BackendFailed, f"cannot read {model}:{variant}"):
            try:
                dep = await self._read_deployment(names.variant_name(model, variant))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return (dep.status.ready_replicas or 0) if dep.status else 0

    async def wait_ready(self, model: str, variant: str, timeout_s: float) -> None:
        """Return once the variant has a ready replica; raise BackendFailed when it cannot."""
        name, what = names.variant_name(model, variant), f"vLLM for {model}:{variant}"
        await self.wait_deployment(name, names.selector(model, variant), what, timeout_s)

    async def wait_deployment(
        self, name: str, selector: dict[str, str], what: str, timeout_s: float
    ) -> None:
        """Return once Deployment ``name`` (its pods: ``selector``) has a ready replica of its
        current spec; raise BackendFailed, saying why ``what`` cannot start, when it cannot."""
        deadline = time.monotonic() + timeout_s
        async with _failing_as(BackendFailed, f"{what}: cannot follow its Deployment {name}"):
            while True:
                dep = await self._read_deployment(name)
                if pods.deployment_ready(dep):
                    return
                found = await self._pods(selector)
                found.sort(key=lambda pod: pods.pod_problem(pod) is None)  # troubled pods first
                problem = pods.deployment_problem(dep) or (
                    pods.pod_problem(found[0]) if found else None
                )
                if problem is not None:
                    log = await self._log_tail(found, objects.VLLM_CONTAINER)
                    raise BackendFailed(f"{what} cannot start: {problem}", log_tail=log)
                if time.monotonic() >= deadline:
                    raise BackendFailed(
                        f"{what} was not ready within {timeout_s:.0f} s: "
                        f"{pods.pending_reason(found)}",
                        log_tail=await self._log_tail(found, objects.VLLM_CONTAINER),
                    )
                await asyncio.sleep(self._poll_s)

    async def _read_deployment(self, name: str) -> V1Deployment:
        return await self._apps.read_namespaced_deployment(
            name, self.namespace, _request_timeout=CALL_TIMEOUT_S
        )

    def server(self, w: VariantWorkload) -> VllmDeployment:
        """The variant as a server with VllmServer's face (start, stop, url, alive)."""
        return VllmDeployment(self, w)

    # -- quantization jobs -----------------------------------------------------------------
    async def run_quantization_job(
        self, q: QuantizationWorkload, on_line: OnLine | None = None
    ) -> dict[str, Any] | None:
        """Run the worker as a Job and wait for it; return its QUANTGATE_RESULT (or None).
        ``on_line`` gets each line of the pod's log, once, as the Job runs.

        Raises JobFailed with the pod's log tail when the Job fails or outlives its deadline.
        A Job of the same id already there (a restarted gateway) is followed, not recreated.
        Cancelled, it deletes the Job (and its pod).
        """
        what = f"quantization of {q.model}:{q.variant} (Job {q.name})"
        async with _failing_as(JobFailed, f"{what}: cannot run"):
            await self._create_job(q)
            try:
                return await self._follow_job(q, what, on_line)
            except (asyncio.CancelledError, JobOverdue):
                with contextlib.suppress(*API_ERRORS):
                    await self._delete_job(q.name)
                raise

    async def _create_job(self, q: QuantizationWorkload) -> None:
        try:
            await self._batch.create_namespaced_job(
                self.namespace,
                objects.quantization_job(q, self.settings),
                field_manager=FIELD_MANAGER,
                _request_timeout=CALL_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _follow_job(
        self, q: QuantizationWorkload, what: str, on_line: OnLine | None
    ) -> dict[str, Any] | None:
        # The Job's activeDeadlineSeconds fails it first; this bounds a Job nobody runs.
        deadline = time.monotonic() + self.settings.job_deadline_s + 120
        selector = {names.INSTANCE: q.name}
        follower = pod_log.LogFollower()
        while True:
            job = await self._batch.read_namespaced_job(
                q.name, self.namespace, _request_timeout=CALL_TIMEOUT_S
            )
            outcome = pods.job_outcome(job)
            found = await self._pods(selector)
            if outcome is not None or on_line is not None:
                log = await self._job_log(found, follower, on_line)
            if outcome is not None:
                succeeded, why = outcome
                if succeeded:
                    return pods.last_marked(log, RESULT)
                raise JobFailed(f"{what} failed: {why}", log_tail=_last_lines(log))
            if time.monotonic() >= deadline:
                raise JobOverdue(
                    f"{what} did not finish in time: {pods.pending_reason(found)}",
                    log_tail=_last_lines(await self._log_tail(found, objects.QUANTIZER_CONTAINER)),
                )
            await asyncio.sleep(self._poll_s)

    async def _job_log(
        self, found: list[V1Pod], follower: pod_log.LogFollower, on_line: OnLine | None
    ) -> str:
        """The tail of the Job pod's log; with ``on_line``, each line not seen before goes to it."""
        container = objects.QUANTIZER_CONTAINER
        if on_line is None:
            return await self._log_tail(found, container, lines=50)
        stamped = await self._log_tail(found, container, FOLLOW_LINES, timestamps=True)
        for line in follower.new_lines(stamped, FOLLOW_LINES):
            on_line(line)
        return pod_log.unstamped(stamped)

    async def _delete_job(self, name: str) -> None:
        await self._batch.delete_namespaced_job(
            name, self.namespace, propagation_policy="Background", _request_timeout=CALL_TIMEOUT_S
        )

    # -- pods --------------------------------------------------------------------------------
    async def _pods(self, labels: dict[str, str]) -> list[V1Pod]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = await self._core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=CALL_TIMEOUT_S
        )
        return list(found.items)

    async def _log_tail(
        self, found: list[V1Pod], container: str, lines: int = LOG_LINES, timestamps: bool = False
    ) -> str:
        """The last lines of the first pod's log (of its crashed run, if it restarted), each
        after its time with ``timestamps``."""
        for pod in found:
            if pod.metadata is None or pod.metadata.name is None:
                continue
            with contextlib.suppress(*API_ERRORS):
                log = await self._core.read_namespaced_pod_log(
                    pod.metadata.name,
                    self.namespace,
                    container=container,
                    tail_lines=lines,
                    timestamps=timestamps or None,
                    previous=pods.restarted(pod, container),
                    _request_timeout=CALL_TIMEOUT_S,
                )
                return str(log)
        return ""


class JobOverdue(JobFailed):
    """The Job outlived its deadline and the grace after it: it is deleted."""


class VllmDeployment:
    """One variant's vLLM on Kubernetes with VllmServer's face, for the fleet.

    ``alive()`` is what this process knows: true from a successful start until ``stop()``.
    Kubernetes restarts a crashed vLLM by itself; ``launcher.ready_replicas`` asks the
    cluster when that matters.
    """

    def __init__(self, launcher: KubernetesLauncher, workload: VariantWorkload) -> None:
        self.workload = workload
        self._launcher = launcher
        self._up = False
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.pid: int | None = None  # no local process

    @property
    def url(self) -> str:
        return self._launcher.backend_url(self.workload.model, self.workload.variant)

    def alive(self) -> bool:
        return self._up

    async def start(self, timeout_s: float) -> None:
        """Apply the Deployment and Service at one replica and wait until it is ready.

        On failure (or cancellation) the Deployment is scaled back to zero and kept, so its
        events and logs can still be read; BackendFailed says why.
        """
        w = self.workload
        self.started_at, self.ready_at = time.time(), None
        await self._launcher.ensure_variant(w, replicas=1)
        try:
            await self._launcher.wait_ready(w.model, w.variant, timeout_s)
        except BaseException:
            with contextlib.suppress(BackendFailed):
                await self._launcher.scale(w.model, w.variant, 0, w.kube.autoscaling is not None)
            raise
        self._up, self.ready_at = True, time.time()

    async def stop(self, grace_s: float = 15.0) -> None:
        """Scale to zero (``grace_s`` is the pods' business: their termination grace period)."""
        self._up = False
        w = self.workload
        await self._launcher.scale(w.model, w.variant, 0, w.kube.autoscaling is not None)


@contextlib.asynccontextmanager
async def _failing_as(
    error: type[BackendFailed] | type[JobFailed], what: str
) -> AsyncIterator[None]:
    """Turn an API error or a transport failure into ``error`` saying ``what`` failed."""
    try:
        yield
    except API_ERRORS as exc:
        raise error(f"{what}: {pods.describe(exc)}") from exc


def _last_lines(log: str, lines: int = LOG_LINES) -> str:
    return "\n".join(log.splitlines()[-lines:])
