"""Admin routes: variants and their replicas, build/start/stop/scale, jobs and their logs,
reloading the manifest.

With ``QUANTGATE_ADMIN_KEY`` set, every admin route needs ``Authorization: Bearer <key>``;
without it, admin routes answer only clients on the loopback interface.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from gateway.errors import NotFound, Unauthorized
from gateway.reloader import Reloader
from gateway.settings import GatewaySettings
from serving.fleet import Fleet
from serving.job import Job
from serving.processes import tail


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0, le=64)


def admin_guard(settings: GatewaySettings) -> Callable[[Request], None]:
    """The dependency every /admin route uses (here and in gateway/usage_admin.py)."""

    def require_admin(request: Request) -> None:
        key = settings.admin_key
        if key is None:
            host = request.client.host if request.client else ""
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise Unauthorized("admin routes answer loopback only unless an admin key is set")
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
            raise Unauthorized("a valid admin key is required")

    return require_admin


def admin_router(fleet: Fleet, settings: GatewaySettings) -> APIRouter:
    router = APIRouter(
        prefix="/admin", tags=["admin"], dependencies=[Depends(admin_guard(settings))]
    )

    @router.post("/reload")
    async def reload(request: Request) -> dict[str, Any]:
        """Apply the manifest file as it is now (400 with its errors: the running one stays)."""
        reloader: Reloader | None = getattr(request.app.state, "reloader", None)
        if reloader is None:
            raise NotFound("this gateway was not started from a manifest file")
        return await reloader.reload("POST /admin/reload")

    _variant_routes(router, fleet)
    _job_routes(router, fleet)
    return router


def _variant_routes(router: APIRouter, fleet: Fleet) -> None:
    @router.get("/variants")
    async def variants() -> dict[str, Any]:
        return {"object": "list", "data": [s.model_dump(mode="json") for s in fleet.statuses()]}

    @router.get("/backends")
    async def backends() -> dict[str, Any]:
        """Every replica of every variant: state, port, pid, kernel, uptime, restarts."""
        rows = []
        for v in fleet.statuses():
            for r in v.replicas:
                rows.append(
                    {"model": v.model, "variant": v.variant, "kernel": v.kernel.kernel, **r}
                )
        return {"object": "list", "data": rows, "placement": fleet.placement.claims()}

    @router.post("/variants/{model}/{variant}/build", status_code=202)
    async def build(model: str, variant: str) -> dict[str, Any]:
        model_name, name = fleet.resolve(f"{model}:{variant}")
        job = fleet.build(model_name, name)
        status = fleet.status(model_name, name).model_dump(mode="json")
        return {"variant": status, "job": job.summary() if job else None}

    @router.post("/variants/{model}/{variant}/start")
    async def start(model: str, variant: str) -> dict[str, Any]:
        model_name, name = fleet.resolve(f"{model}:{variant}")
        replicas = fleet.manifest.models[model_name].serve.replicas
        await fleet.scale(model_name, name, replicas)
        return fleet.status(model_name, name).model_dump(mode="json")

    @router.post("/variants/{model}/{variant}/stop")
    async def stop(model: str, variant: str) -> dict[str, Any]:
        model_name, name = fleet.resolve(f"{model}:{variant}")
        await fleet.stop(model_name, name)
        return fleet.status(model_name, name).model_dump(mode="json")

    @router.post("/variants/{model}/{variant}/scale")
    async def scale(model: str, variant: str, body: ScaleRequest) -> dict[str, Any]:
        model_name, name = fleet.resolve(f"{model}:{variant}")
        await fleet.scale(model_name, name, body.replicas)
        return fleet.status(model_name, name).model_dump(mode="json")


def _job_routes(router: APIRouter, fleet: Fleet) -> None:
    @router.get("/jobs")
    async def jobs() -> dict[str, Any]:
        return {"object": "list", "data": [j.summary() for j in fleet.jobs.jobs()]}

    @router.get("/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return _job(fleet, job_id).summary()

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (409 job_already_finished for one that ended)."""
        job = await fleet.jobs.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job.summary()

    @router.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
    async def job_log(job_id: str, lines: int = 200) -> str:
        return tail(_job(fleet, job_id).log_path, max(1, min(lines, 10_000)))


def _job(fleet: Fleet, job_id: str) -> Job:
    job = fleet.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job
