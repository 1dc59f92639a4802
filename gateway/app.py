"""The gateway application: OpenAI-compatible routes, admin routes, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.accounting import Accounting
from gateway.admin import admin_router
from gateway.errors import (
    error_response,
    http_error_response,
    internal_error_response,
    validation_error_response,
)
from gateway.keys import KeyRing
from gateway.metrics import GatewayMetrics
from gateway.proxy import ENDPOINTS, Proxy
from gateway.reloader import Reloader
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamPool
from gateway.usage_admin import usage_router
from serving.errors import QuantgateError
from serving.fleet import Fleet

log = logging.getLogger(__name__)

OPENAI_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}


class QuantgateApp(FastAPI):
    """FastAPI for everything but the proxied routes, which go straight to the proxy (a raw
    ASGI app): no routing, validation or middleware on the hot path."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ENDPOINTS:
            proxy: Proxy | None = getattr(self.state, "proxy", None)
            if proxy is not None:
                await proxy(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    fleet: Fleet,
    settings: GatewaySettings,
    registry: CollectorRegistry | None = None,
    manifest_path: Path | None = None,
    watch_s: float | None = None,
) -> QuantgateApp:
    """The app; with ``manifest_path`` it reloads that file on ``POST /admin/reload``, SIGHUP
    and (``watch_s``) when its content changes."""
    metrics = GatewayMetrics(registry or CollectorRegistry())
    metrics.watch_jobs(fleet.jobs.jobs)
    metrics.watch_replicas(fleet.replica_rows)
    metrics.watch_residency(fleet.residency_rows)
    metrics.watch_kernels(fleet.kernel_rows)
    fleet.observe_swaps(metrics.record_swap)
    keys = KeyRing.from_auth(fleet.manifest.auth)  # unreadable keys fail here, before serving

    lifespan = _lifespan(fleet, settings, metrics, keys, manifest_path, watch_s)
    app = QuantgateApp(
        title="Quantgate",
        version="0.1.0",
        summary="OpenAI-compatible gateway over on-demand quantized vLLM variants.",
        lifespan=lifespan,
    )
    app.state.fleet = fleet
    app.state.metrics = metrics
    app.state.settings = settings

    _map_errors(app)
    _ops_routes(app, fleet, metrics, keys)
    for path in ENDPOINTS:
        _document(app, path)

    app.include_router(admin_router(fleet, settings))
    app.include_router(usage_router(settings))
    return app


def _lifespan(
    fleet: Fleet,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    keys: KeyRing,
    manifest_path: Path | None,
    watch_s: float | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the accounting and the upstream pool, start the fleet and the manifest watch; on
    the way out stop them in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = UpstreamPool(settings.connect_timeout_s)
        async with Accounting.open(keys, settings, fleet.manifest.cache_dir, metrics) as accounting:
            app.state.accounting = accounting
            app.state.keys, app.state.limiter = accounting.keys, accounting.limiter
            app.state.ledger = accounting.ledger
            app.state.proxy = Proxy(fleet, pool, metrics, settings, accounting)
            fleet.start()
            watching = _reloading(app, manifest_path, fleet, keys, metrics, watch_s)
            try:
                yield
            finally:
                if watching is not None:
                    watching.cancel()
                await fleet.aclose()
                pool.close()

    return lifespan


def _map_errors(app: FastAPI) -> None:
    """Every error the framework raises answers the OpenAI error shape, as ours do."""

    @app.exception_handler(QuantgateError)
    async def _quantgate_error(request: Request, exc: QuantgateError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return http_error_response(exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return validation_error_response(exc.errors())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return internal_error_response(exc)


def _ops_routes(app: FastAPI, fleet: Fleet, metrics: GatewayMetrics, keys: KeyRing) -> None:
    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> dict[str, Any]:
        principal = keys.authenticate(request.headers.get("authorization"))
        cards = model_cards(fleet)
        allowed = [
            c for c in cards if principal.allows(c["quantgate"]["model"], c["quantgate"]["variant"])
        ]
        return {"object": "list", "data": allowed}


def _reloading(
    app: FastAPI,
    path: Path | None,
    fleet: Fleet,
    keys: KeyRing,
    metrics: GatewayMetrics,
    watch_s: float | None,
) -> asyncio.Task[None] | None:
    """Set up reloads of ``path`` (none without one); the file watch's task, if asked for."""
    if path is None:
        return None
    reloader = app.state.reloader = Reloader(path, fleet, keys, metrics)

    hangups: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references

    def on_hangup() -> None:
        task = asyncio.ensure_future(reloader.try_reload("SIGHUP"))
        hangups.add(task)
        task.add_done_callback(hangups.discard)

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hangup)
    return asyncio.create_task(reloader.watch(watch_s), name="manifest-watch") if watch_s else None


def model_cards(fleet: Fleet) -> list[dict[str, Any]]:
    """One card per name a client may use: ``model`` (its default variant) and ``model:variant``."""
    created = int(time.time())
    cards = []
    for model_name, model in fleet.manifest.models.items():
        for name in [None, *model.variants]:
            variant = name or model.default_variant
            info = fleet.status(model_name, variant)
            card_id = model_name if name is None else f"{model_name}:{name}"
            cards.append(
                {
                    "id": card_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "quantgate",
                    "quantgate": {
                        "model": model_name,
                        "variant": variant,
                        "state": info.state.value,
                        "residency": info.residency,
                        "method": info.method,
                        "default": info.default,
                        "kernel": info.kernel.kernel,
                        "kernel_measured": info.kernel.measured,
                        "quantization": info.kernel.quantization,
                        "error": info.error,
                    },
                }
            )
    return cards


def _document(app: FastAPI, path: str) -> None:
    """Declare a proxied route for /docs. Requests never reach it: QuantgateApp hands them to
    the proxy first; the body is any JSON vLLM accepts for that route."""

    async def proxied(request: Request) -> Response:
        raise RuntimeError("proxied routes are served by QuantgateApp.__call__")

    app.post(
        path,
        tags=["openai"],
        summary=f"POST {path} (forwarded to the variant's vLLM as received)",
        openapi_extra={"requestBody": OPENAI_BODY},
    )(proxied)
