"""What the proxy forwards and records, on real sockets, fake vLLM behind it: the Responses
API's streams and usage; names a replica does not serve itself (aliases, ``model:auto``, a
fallback variant); a replica slower than the first-byte timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AVX512, LiveServer, ServeFleet, gateway_on, write_manifest
from gateway.settings import GatewaySettings
from serving.manifest import parse_manifest

Start = Callable[..., LiveServer]
RESPONSES = {"model": "tiny", "input": "hi there", "max_output_tokens": 5}
TINY = {"model": "tiny", "variant": "base"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def sample(server: LiveServer, name: str, **labels: str) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


def ledger(server: LiveServer, group_by: str = "endpoint,status") -> list[dict[str, Any]]:
    r = httpx.get(server.url + "/admin/usage", params={"group_by": group_by}, timeout=30)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


def events(server: LiveServer, body: dict[str, object]) -> list[tuple[str, str]]:
    """A streamed answer's SSE events, as (event type, data)."""
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
    found = []
    for event in text.split("\n\n")[:-1]:
        kind, _, data = event.partition("\n")
        found.append((kind.removeprefix("event: "), data.removeprefix("data: ")))
    return found


def test_a_responses_stream_is_whole_metered_and_timed(gateway: Start) -> None:
    server = gateway()
    got = events(server, {**RESPONSES, "stream": True})
    kinds = [kind for kind, _ in got]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    assert "error" not in kinds and all("[DONE]" not in data for _, data in got)
    status = {**TINY, "endpoint": "responses"}
    assert sample(server, "quantgate_requests_total", **status, status="200") == 1
    assert sample(server, "quantgate_requests_total", **status, status="502") == 0
    assert sample(server, "quantgate_upstream_errors_total", **TINY) == 0
    assert sample(server, "quantgate_completion_tokens_total", **TINY) == 5
    assert sample(server, "quantgate_prompt_tokens_total", **TINY) == 2
    assert sample(server, "quantgate_time_to_first_token_seconds_count", **TINY) == 1
    [row] = ledger(server)
    assert (row["endpoint"], row["status"], row["errors"]) == ("responses", 200, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)
    assert row["ttft_s_avg"] is not None


def test_a_whole_response_is_metered(gateway: Start) -> None:
    server = gateway()
    r = httpx.post(server.url + "/v1/responses", json=RESPONSES, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["output_tokens"] == 5
    [row] = ledger(server)
    assert (row["endpoint"], row["status"]) == ("responses", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)


def test_a_responses_stream_cut_short_ends_with_an_error_event(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BREAK_AFTER", "2")
    server = gateway()
    got = events(server, {**RESPONSES, "stream": True})
    kind, data = got[-1]
    assert kind == "error" and '"code": "stream_interrupted"' in data
    assert "before response.completed" in data
    assert [k for k, _ in got].count("response.output_text.delta") == 2
    assert all("[DONE]" not in data for _, data in got)
    [row] = ledger(server)
    assert (row["endpoint"], row["status"], row["errors"]) == ("responses", 502, 1)


def test_the_backends_own_error_in_a_stream_is_passed_on_once_and_recorded(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's in-band error ends a Responses stream: the client gets it, with no second error
    event of the gateway's, and the ledger and metrics record a failed request."""
    monkeypatch.setenv("FAKE_FAIL_AFTER", "2")
    server = gateway()
    got = events(server, {**RESPONSES, "stream": True})
    errors = [data for kind, data in got if kind == "error"]
    assert len(errors) == 1 and got[-1][0] == "error"
    assert json.loads(errors[0])["code"] == "InternalServerError"
    assert "stream_interrupted" not in errors[0]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=30) as r:  # fmt: skip
        chat = r.read().decode()
    assert chat.count('"error"') == 1 and chat.endswith("data: [DONE]\n\n")
    rows = {row["endpoint"]: row for row in ledger(server)}
    assert [(e, rows[e]["status"], rows[e]["errors"]) for e in ("chat", "responses")] == [
        ("chat", 502, 1), ("responses", 502, 1)]  # fmt: skip
    assert sample(server, "quantgate_upstream_errors_total", **TINY) == 2


@pytest.fixture
def aliased(tmp_path: Path, model_dir: Path, live_gateway: ServeFleet) -> LiveServer:
    """A gateway whose manifest names ``tiny`` and ``tiny:auto`` under other names."""
    manifest = write_manifest(tmp_path, model_dir)
    aliases = {"gpt-4o-mini": "tiny", "pinned": "tiny:base", "best": "tiny:auto"}
    return live_gateway(manifest.model_copy(update={"aliases": aliases}), AVX512, GatewaySettings())


@pytest.mark.parametrize("name", ["gpt-4o-mini", "pinned", "best", "tiny:auto"])
def test_a_name_the_replica_does_not_serve_is_forwarded_as_one_it_does(
    aliased: LiveServer, name: str
) -> None:
    r = httpx.post(aliased.url + "/v1/chat/completions", json={**CHAT, "model": name}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny:base"  # what answered, as for a fallback
    assert r.headers["x-quantgate-variant"] == "tiny:base"
    body = {"model": name, "input": "hi", "max_output_tokens": 3, "stream": True}
    with httpx.stream("POST", aliased.url + "/v1/responses", json=body, timeout=30) as s:
        assert s.status_code == 200
        last = [line for line in s.iter_lines() if line.startswith("data: ")][-1]
    assert json.loads(last[6:])["response"]["model"] == "tiny:base"


def test_names_the_replica_serves_are_forwarded_as_sent(aliased: LiveServer) -> None:
    for name in ("tiny", "tiny:base"):
        body = {"model": name, "prompt": "hi", "max_tokens": 3}
        r = httpx.post(aliased.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name


def test_a_fallback_variant_answers_under_its_own_name(gateway: Start) -> None:
    server = gateway(on_missing="wait, fallback: true")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    r = httpx.post(
        server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:gptq"}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == r.headers["x-quantgate-variant"] == "tiny:base"


def test_after_a_reload_moves_the_default_the_bare_name_reaches_the_new_default(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    """A kept variant keeps its process, and the names it was started with: the bare model
    name is forwarded as one it serves."""
    text = f"""
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {model_dir}
    default_variant: base
    serve: {{startup_timeout_s: 30}}
    variants:
      base: {{method: none}}
      other: {{method: none}}
"""
    path = tmp_path / "manifest.yaml"
    with gateway_on(text, path, fake_vllm_python) as server, httpx.Client(timeout=30) as client:
        for name in ("tiny:base", "tiny:other"):
            r = client.post(server.url + "/v1/chat/completions", json={**CHAT, "model": name})
            assert r.status_code == 200, r.text
        path.write_text(text.replace("default_variant: base", "default_variant: other"))
        reload = client.post(server.url + "/admin/reload")
        assert reload.status_code == 200, reload.text
        assert reload.json()["kept"] == ["tiny:base", "tiny:other"]
        r = client.post(server.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny:other"


def test_a_slow_replica_times_out_at_once_and_keeps_its_circuit_closed(
    tmp_path: Path, model_dir: Path, live_gateway: ServeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation longer than the first-byte timeout is no reason to try another replica,
    which would be as slow, nor a failure of the replica: 504 at once, nothing retried."""
    monkeypatch.setenv("FAKE_TTFT_S", "2")
    text = f"""
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {model_dir}
    default_variant: base
    serve: {{startup_timeout_s: 30, replicas: 2}}
    routing: {{failure_threshold: 1, open_s: 60}}
    variants:
      base: {{method: none}}
"""
    manifest = parse_manifest(text, tmp_path / "manifest.yaml")
    server = live_gateway(manifest, AVX512, GatewaySettings(first_byte_timeout_s=0.3))
    url = server.url + "/v1/chat/completions"
    assert httpx.post(url, json=CHAT, timeout=30).status_code == 504  # starts both replicas
    deadline = time.monotonic() + 30
    while [r["state"] for r in backends(server)] != ["ready", "ready"]:
        assert time.monotonic() < deadline, backends(server)
        time.sleep(0.1)
    t0 = time.perf_counter()
    r = httpx.post(url, json=CHAT, timeout=30)
    took = time.perf_counter() - t0
    assert r.status_code == 504, r.text
    assert r.json()["error"] == {
        "message": "backend for tiny:base timed out: no response from the backend in 0.3 s",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_timeout",
    }
    assert took < 1.5, took  # one replica's timeout, not one per replica tried
    assert [row["circuit"] for row in backends(server)] == ["closed", "closed"]
    assert sample(server, "quantgate_upstream_retries_total", **TINY) == 0
    assert sample(server, "quantgate_upstream_errors_total", **TINY) == 2
    status = {**TINY, "endpoint": "chat", "status": "504"}
    assert sample(server, "quantgate_requests_total", **status) == 2


def backends(server: LiveServer) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = httpx.get(server.url + "/admin/backends").json()["data"]
    return rows
