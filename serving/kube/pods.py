"""Reading what went wrong from a workload's pods and its Deployment or Job status.

A pod stuck in CrashLoopBackOff or failing to pull its image will never become ready:
that is reported at once, with the tail of the container's log, instead of after the
whole startup timeout.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.aio.client import V1Deployment, V1Job, V1Pod
from kubernetes.aio.client.exceptions import ApiException

# Container waiting reasons that do not go away by waiting.
HOPELESS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def deployment_ready(dep: V1Deployment) -> bool:
    """At least one ready replica of the current spec (the controller has seen the last edit)."""
    status, meta = dep.status, dep.metadata
    if status is None or not status.ready_replicas:
        return False
    generation = meta.generation if meta else None
    return generation is None or (status.observed_generation or 0) >= generation


def deployment_problem(dep: V1Deployment) -> str | None:
    """Why the Deployment's controller gave up, if it did."""
    for cond in (dep.status.conditions if dep.status else None) or []:
        stuck = cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded"
        refused = cond.type == "ReplicaFailure" and cond.status == "True"
        if stuck or refused:
            return f"{cond.reason}: {cond.message or cond.type}"
    return None


def pod_problem(pod: V1Pod) -> str | None:
    """A reason the pod will not start by waiting longer, or None."""
    name = pod.metadata.name if pod.metadata else "?"
    status = pod.status
    if status is None:
        return None
    if status.phase == "Failed":
        return f"pod {name} failed: {status.reason or ''} {status.message or ''}".rstrip()
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in HOPELESS:
            return f"pod {name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
    return None


def pending_reason(pods: list[V1Pod]) -> str:
    """What the pods are doing, for a timeout message (e.g. unschedulable for lack of GPUs)."""
    if not pods:
        return "no pod was created"
    parts = []
    for pod in pods:
        name = pod.metadata.name if pod.metadata else "?"
        phase = pod.status.phase if pod.status else None
        why = [
            f"{c.reason}: {c.message}"
            for c in (pod.status.conditions if pod.status else None) or []
            if c.status == "False" and c.reason
        ]
        parts.append(
            f"pod {name} is {phase or 'unknown'}" + (f" ({'; '.join(why)})" if why else "")
        )
    return "; ".join(parts)


def restarted(pod: V1Pod, container: str) -> bool:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return any(c.name == container and c.restart_count > 0 for c in statuses)


def job_outcome(job: V1Job) -> tuple[bool, str] | None:
    """(True, "") when the Job succeeded, (False, why) when it failed, None while it runs."""
    status = job.status
    if status is None:
        return None
    conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions or status.succeeded:
        return True, ""
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    if failed is not None:
        return False, f"{failed.reason or 'Failed'}: {failed.message or 'the Job failed'}"
    if status.failed:  # backoffLimit 0: one failed pod fails the Job
        return False, "its pod failed"
    return None


def last_marked(log: str, marker: str) -> dict[str, Any] | None:
    """The JSON after the last line starting with ``marker`` (the worker's protocol)."""
    for line in reversed(log.splitlines()):
        if line.startswith(marker):
            try:
                data: dict[str, Any] = json.loads(line[len(marker) :])
            except ValueError:
                return None
            return data
    return None


def describe(exc: Exception) -> str:
    """A one-line account of an API error or a transport failure."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "")["message"]
        except (TypeError, ValueError, KeyError):
            message = exc.reason
        return f"the Kubernetes API answered {exc.status}: {message}"
    return f"cannot reach the Kubernetes API: {exc!r}"
