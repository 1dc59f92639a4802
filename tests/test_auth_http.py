"""Keys, limits and metering through the real proxy, fake vLLM behind it, on real sockets."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from conftest import LiveServer, make_fleet, write_manifest
from gateway.app import create_app
from gateway.settings import GatewaySettings
from serving.manifest import ApiKey, Auth

ADMIN = "adm-live-61c0"
FULL = "sk-live-full-0d9e"  # every model, 4 requests/min
GPTQ = "sk-live-gptq-77a1"  # tiny:gptq only
SECRETS = (ADMIN, FULL, GPTQ)
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}
Start = Callable[[], LiveServer]


@pytest.fixture
def start(
    tmp_path: Path,
    model_dir: Path,
    fake_vllm_python: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Start]:
    """Start (and restart) a gateway with keys on the same cache dir, hence the same ledger."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("QG_LIVE_FULL", FULL)
    digest = hashlib.sha256(GPTQ.encode()).hexdigest()
    auth = Auth(
        keys=(
            ApiKey(name="full", key_env="QG_LIVE_FULL", models=("*",), requests_per_minute=4),
            ApiKey(name="gptq", key_sha256=digest, models=("tiny:gptq",)),
        )
    )
    manifest = write_manifest(tmp_path, model_dir).model_copy(update={"auth": auth})
    servers: list[LiveServer] = []

    def run() -> LiveServer:
        registry = CollectorRegistry()
        settings = GatewaySettings.model_validate({"admin_key": ADMIN})
        app = create_app(make_fleet(manifest, fake_vllm_python), settings, registry)
        servers.append(LiveServer(app, registry).__enter__())
        return servers[-1]

    yield run
    for server in servers:
        server.__exit__()
    for secret in SECRETS:
        assert secret not in caplog.text, "a key reached the logs"


def post(server: LiveServer, key: str | None, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        server.url + "/v1/chat/completions", json={**CHAT, **body}, headers=headers, timeout=30
    )


def usage(server: LiveServer, group_by: str = "") -> list[dict[str, Any]]:
    r = httpx.get(
        server.url + "/admin/usage",
        params={"group_by": group_by},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


def test_missing_or_invalid_key_is_401(start: Start) -> None:
    server = start()
    for key in (None, "sk-invalid", ADMIN):
        r = post(server, key)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_model_not_allowed_is_403(start: Start) -> None:
    server = start()
    assert post(server, GPTQ, model="tiny:gptq").status_code == 200
    r = post(server, GPTQ, model="tiny")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "model_not_allowed"


def test_over_limit_is_429_with_retry_after(start: Start) -> None:
    server = start()
    assert [post(server, FULL).status_code for _ in range(4)] == [200] * 4
    r = post(server, FULL)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    value = server.registry.get_sample_value(
        "quantgate_rate_limited_total", {"key": "full", "reason": "requests"}
    )
    assert value == 1


def _stream_usage(server: LiveServer) -> dict[str, int]:
    body = {**CHAT, "model": "tiny:gptq", "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {GPTQ}"}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: {")]
    found: dict[str, int] = json.loads(events[-1])["usage"]
    return found


def test_ledger_is_exact_and_survives_a_restart(start: Start) -> None:
    server = start()
    reported = {"prompt_tokens": 0, "completion_tokens": 0}
    for i in range(6):
        if i % 2:
            got = _stream_usage(server)
        else:
            got = post(server, GPTQ, model="tiny:gptq", max_tokens=2 + i).json()["usage"]
        for name in reported:
            reported[name] += got[name]
    [total] = usage(server)
    assert (total["prompt_tokens"], total["completion_tokens"]) == tuple(reported.values())
    assert total["requests"] == 6
    server.__exit__()  # graceful stop: the ledger flushes
    again = start()
    [after] = usage(again, "key,model,variant")
    assert (after["key"], after["model"], after["variant"]) == ("gptq", "tiny", "gptq")
    assert (after["prompt_tokens"], after["completion_tokens"]) == tuple(reported.values())
