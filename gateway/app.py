"""The gateway application: OpenAI-compatible routes, admin routes, health and metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.accounting import Accounting
from gateway.admin import admin_router
from gateway.errors import error_response
from gateway.keys import KeyRing
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.settings import GatewaySettings
from gateway.usage_admin import usage_router
from serving.errors import QuantgateError
from serving.fleet import Fleet

CHAT_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}


def create_app(
    fleet: Fleet, settings: GatewaySettings, registry: CollectorRegistry | None = None
) -> FastAPI:
    metrics = GatewayMetrics(registry or CollectorRegistry())
    metrics.watch_jobs(fleet.job_counts)
    keys = KeyRing.from_auth(fleet.manifest.auth)  # unreadable keys fail here, before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.read_timeout_s,
            pool=None,
        )
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with (
            Accounting.open(keys, settings, fleet.manifest.cache_dir, metrics) as accounting,
            httpx.AsyncClient(timeout=timeout, limits=limits) as client,
        ):
            app.state.accounting = accounting
            app.state.keys, app.state.limiter = accounting.keys, accounting.limiter
            app.state.ledger = accounting.ledger
            app.state.proxy = Proxy(fleet, client, metrics, settings.max_body_bytes)
            fleet.start()
            try:
                yield
            finally:
                await fleet.aclose()

    app = FastAPI(
        title="Quantgate",
        version="0.1.0",
        summary="OpenAI-compatible gateway over on-demand quantized vLLM variants.",
        lifespan=lifespan,
    )
    app.state.fleet = fleet
    app.state.metrics = metrics
    app.state.settings = settings

    @app.exception_handler(QuantgateError)
    async def _quantgate_error(request: Request, exc: QuantgateError) -> Response:
        return error_response(exc)

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

    @app.post("/v1/chat/completions", tags=["openai"], openapi_extra={"requestBody": CHAT_BODY})
    async def chat_completions(request: Request) -> Response:
        proxy: Proxy = request.app.state.proxy
        return await proxy.handle(request, "/v1/chat/completions", "chat")

    @app.post("/v1/completions", tags=["openai"], openapi_extra={"requestBody": CHAT_BODY})
    async def completions(request: Request) -> Response:
        proxy: Proxy = request.app.state.proxy
        return await proxy.handle(request, "/v1/completions", "completions")

    app.include_router(admin_router(fleet, settings))
    app.include_router(usage_router(settings))
    return app


def model_cards(fleet: Fleet) -> list[dict[str, Any]]:
    """One card per name a client may use: ``model`` (its default variant) and ``model:variant``."""
    created = int(time.time())
    cards = []
    for model_name, model in fleet.manifest.models.items():
        for name in [None, *model.variants]:
            variant = name or model.default_variant
            info = fleet.describe(model_name, variant)
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
                        "state": info["state"],
                        "method": info["method"],
                        "default": info["default"],
                        "kernel": info["kernel"]["kernel"],
                        "quantization": info["kernel"]["quantization"],
                        "error": info["error"],
                    },
                }
            )
    return cards
