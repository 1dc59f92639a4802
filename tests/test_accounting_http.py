"""The HTTP contract of keys, limits and metering, through a minimal app wired as the proxy will be.

The route below makes exactly the calls gateway/accounting.py documents for the proxy (with a
fixed answer instead of a backend), so 401/403/429 bodies and headers, exact metering and
"keys never logged" are checked without gateway/proxy.py. tests/test_auth_http.py checks the
same through the real proxy once it makes these calls.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting
from gateway.errors import error_response
from gateway.keys import KeyRing
from gateway.ledger import UsageRow
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.usage_admin import usage_router
from serving.errors import QuantgateError
from serving.manifest import ApiKey, Auth

ADMIN = "adm-secret-0b7e"
FULL = "sk-full-5c2d91"  # every model, 3 requests/min
GPTQ = "sk-gptq-a4e077"  # tiny:gptq only, 50 tokens/min
QUOTA = "sk-quota-19fa3"  # 30 tokens ever
SECRETS = (ADMIN, FULL, GPTQ, QUOTA)


def keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> KeyRing:
    monkeypatch.setenv("QG_TEST_FULL", FULL)
    (tmp_path / "gptq.key").write_text(GPTQ + "\n")
    (tmp_path / "gptq.key").chmod(0o600)
    digest = hashlib.sha256(QUOTA.encode()).hexdigest()
    keys = (
        ApiKey(name="full", key_env="QG_TEST_FULL", models=("*",), requests_per_minute=3),
        ApiKey(name="gptq", key_file=tmp_path / "gptq.key", models=("tiny:gptq",),
               tokens_per_minute=50),
        ApiKey(name="quota", key_sha256=digest, models=("tiny",), token_quota=30),
    )  # fmt: skip
    return KeyRing.from_auth(Auth(keys=keys))


def reference_app(keys: KeyRing, cache: Path, registry: CollectorRegistry) -> FastAPI:
    settings = GatewaySettings.model_validate({"admin_key": ADMIN})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Accounting.open(keys, settings, cache, GatewayMetrics(registry)) as acct:
            app.state.accounting, app.state.ledger = acct, acct.ledger
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_exception_handler(QuantgateError, lambda _, exc: error_response(exc))
    app.include_router(usage_router(settings))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, object]:
        started = time.perf_counter()
        acct: Accounting = request.app.state.accounting
        principal = acct.authenticate(request.headers.get("authorization"))
        body = await request.json()
        model, _, variant = str(body["model"]).partition(":")
        variant = variant or "base"
        acct.authorize(principal, model, variant)
        await acct.admit(principal)
        usage = {"prompt_tokens": len(str(body["messages"])) % 7 + 3,
                 "completion_tokens": int(body.get("max_tokens", 5))}  # fmt: skip
        acct.settle(
            principal,
            UsageRow(principal.name, model, variant, 0, "chat", 200, usage["prompt_tokens"],
                     usage["completion_tokens"], time.perf_counter() - started),
        )  # fmt: skip
        return {"object": "chat.completion", "usage": usage}

    return app


@pytest.fixture
def client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[TestClient]:
    caplog.set_level(logging.DEBUG)
    app = reference_app(keyring(monkeypatch, tmp_path), tmp_path, CollectorRegistry())
    with TestClient(app) as test_client:
        yield test_client
    for secret in SECRETS:
        assert secret not in caplog.text, "a key reached the logs"


def chat(client: TestClient, key: str | None, model: str = "tiny", max_tokens: int = 5) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    return client.post("/v1/chat/completions", json=body, headers=headers)


def test_missing_or_invalid_key_is_401(client: TestClient) -> None:
    for key in (None, "sk-invalid", ADMIN):
        r = chat(client, key)
        assert r.status_code == 401
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("authentication_error", "invalid_api_key")


def test_model_not_allowed_is_403(client: TestClient) -> None:
    assert chat(client, GPTQ, "tiny:gptq").status_code == 200
    r = chat(client, GPTQ, "tiny")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"


def test_over_the_request_limit_is_429_with_retry_after(client: TestClient) -> None:
    assert [chat(client, FULL).status_code for _ in range(3)] == [200, 200, 200]
    r = chat(client, FULL)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(r.headers["retry-after"]) <= 60


def test_over_tokens_per_minute_is_429(client: TestClient) -> None:
    assert chat(client, GPTQ, "tiny:gptq", max_tokens=47).status_code == 200  # + 3 prompt = 50
    r = chat(client, GPTQ, "tiny:gptq")
    assert r.status_code == 429 and "50 tokens per minute" in r.text
    assert int(r.headers["retry-after"]) >= 55


def test_exhausted_quota_is_429_without_retry_after(client: TestClient) -> None:
    assert chat(client, QUOTA, max_tokens=27).status_code == 200  # + 3 prompt = 30
    r = chat(client, QUOTA)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert "retry-after" not in r.headers


def test_admin_usage_without_admin_key_is_401(client: TestClient) -> None:
    assert client.get("/admin/usage").status_code == 401
    assert (
        client.get("/admin/usage", headers={"authorization": f"Bearer {FULL}"}).status_code == 401
    )


def test_ledger_tokens_equal_the_usage_reported(client: TestClient) -> None:
    reported = {"prompt_tokens": 0, "completion_tokens": 0}
    for i in range(40):
        key, model = (GPTQ, "tiny:gptq") if i % 2 else (FULL, "tiny:awq")
        r = chat(client, key, model, max_tokens=1 + i % 4)
        if r.status_code == 200:
            for name in reported:
                reported[name] += r.json()["usage"][name]
    admin = {"authorization": f"Bearer {ADMIN}"}
    [total] = client.get("/admin/usage", params={"group_by": ""}, headers=admin).json()["data"]
    assert total["prompt_tokens"] == reported["prompt_tokens"]
    assert total["completion_tokens"] == reported["completion_tokens"]
    by_key = client.get("/admin/usage", params={"group_by": "key"}, headers=admin).json()["data"]
    assert {row["key"] for row in by_key} == {"full", "gptq"}
