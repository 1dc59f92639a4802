"""A variant that points at an already-running OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import fake_upstream, fake_upstream_process, free_port, gateway_on
from serving.manifest import Upstream, parse_manifest


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("UPSTREAM_KEY", "k-123")
    with fake_upstream("real-name", FAKE_API_KEY="k-123") as url:
        yield url


def test_static_upstream_is_routed_renamed_keyed_and_metered(
    tmp_path: Path, upstream: str, fake_vllm_python: Path
) -> None:
    text = f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: main
    variants:
      main:
        method: none
        upstream: {{url: "{upstream}", api_key_env: UPSTREAM_KEY, model: real-name}}
"""
    with gateway_on(text, tmp_path / "m.yaml", fake_vllm_python) as server:
        card = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert card["quantgate"]["state"] == "ready"
        assert card["quantgate"]["kernel"] == "external"
        body = {"model": "ext", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "real-name"
        labels = {"model": "ext", "variant": "main"}
        assert server.registry.get_sample_value("quantgate_completion_tokens_total", labels) == 3


def test_upstream_variant_needs_no_source_but_local_ones_do(tmp_path: Path) -> None:
    text = f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: main
    variants:
      main: {{method: none, upstream: {{url: "http://127.0.0.1:1"}}}}
      local: {{method: none}}
"""
    with pytest.raises(Exception, match="source is required: variants local"):
        parse_manifest(text, tmp_path / "m.yaml")


def test_a_dead_upstream_fails_fast_once_its_circuit_is_open(
    tmp_path: Path, fake_vllm_python: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()  # nothing listens there
    text = f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: main
    variants:
      main: {{method: none, upstream: {{url: "http://127.0.0.1:{dead}"}}}}
    routing: {{failure_threshold: 3, open_s: 30}}
"""
    server_of = gateway_on(text, tmp_path / "m.yaml", fake_vllm_python)
    body = {"model": "ext", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with server_of as server, httpx.Client(timeout=60) as client:
        first = client.post(server.url + "/v1/chat/completions", json=body)
        assert first.status_code == 502, first.text  # three tries, then the circuit opens
        assert "circuit opened after 3 failed requests" in caplog.text
        for stream in (False, True):
            t0 = time.perf_counter()
            r = client.post(server.url + "/v1/chat/completions", json={**body, "stream": stream})
            took = time.perf_counter() - t0
            assert r.status_code == 503, r.text
            assert took < 0.05, took
            assert 1 <= int(r.headers["retry-after"]) <= 30
            error = r.json()["error"]
            assert "unreachable" in error["message"] and "circuit is open" in error["message"]
        card = client.get(server.url + "/v1/models").json()["data"][0]
        assert card["quantgate"]["state"] == "unreachable"


def test_a_v1_url_works_and_the_model_name_is_asked_of_the_upstream(
    tmp_path: Path, upstream: str, fake_vllm_python: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: main
    variants:
      main: {{method: none, upstream: {{url: "{upstream}/v1/", api_key_env: UPSTREAM_KEY}}}}
      wrong:
        method: none
        upstream: {{url: "{upstream}", api_key_env: UPSTREAM_KEY, model: nope}}
"""
    caplog.set_level(logging.INFO)
    manifest = parse_manifest(text, tmp_path / "m.yaml")
    assert manifest.models["ext"].variants["main"].upstream.url == upstream  # type: ignore[union-attr]
    server_of = gateway_on(text, tmp_path / "m.yaml", fake_vllm_python)
    body = {"model": "ext", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with server_of as server, httpx.Client(timeout=30) as client:
        r = client.post(server.url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "real-name"
        assert "ext:main upstream #0 serves real-name" in caplog.text
        # the upstream's own error keeps its status and message, in the gateway's shape
        r = client.post(server.url + "/v1/chat/completions", json={**body, "model": "ext:wrong"})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": "The model `nope` does not exist.",
                                      "type": "invalid_request_error", "param": "model",
                                      "code": None}}  # fmt: skip


def test_check_probe_asks_each_upstream_what_it_serves(tmp_path: Path, upstream: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: good
    variants:
      good: {{method: none, upstream: {{url: "{upstream}/v1", api_key_env: UPSTREAM_KEY}}}}
      wrong: {{method: none, upstream: {{url: "{upstream}", api_key_env: UPSTREAM_KEY, model: x}}}}
""")
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path), "--probe"],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"ext:good: upstream {upstream} serves real-name" in run.stdout
    assert f"ext:wrong: upstream {upstream} serves real-name: model 'x' is not among" in run.stderr


def test_check_flags_a_source_that_is_not_there_for_the_base_too(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"""version: 1
cache_dir: {tmp_path}
models:
  tiny:
    source: {tmp_path}/nowhere
    default_variant: base
    variants:
      base: {{method: none}}
""")
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2
    assert f"{path}:5: models.tiny.source: source {tmp_path}/nowhere does not exist" in run.stderr


def test_log_lines_as_json_carry_the_event() -> None:
    from gateway.logs import JsonLines

    record = logging.LogRecord("serving.replica", logging.WARNING, __file__, 1,
                               "%s: circuit opened", ("ext:a #0",), None)  # fmt: skip
    line = json.loads(JsonLines().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "serving.replica"
    assert line["message"] == "ext:a #0: circuit opened" and line["time"]


def test_an_unreadable_model_list_is_not_asked_for_on_every_request() -> None:
    """A server whose /v1/models is not JSON: asked once, then again only after a pause."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from serving.static_replica import StaticReplica

    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        upstream = Upstream(url=f"http://127.0.0.1:{http.server_address[1]}")
        replica = StaticReplica(upstream, "ext:main upstream")

        async def ask_three_times() -> list[str | None]:
            return [await replica.served_model({}) for _ in range(3)]

        assert asyncio.run(ask_three_times()) == [None, None, None]
        assert asked == ["/v1/models"]  # once; the next two requests went on without asking
    finally:
        http.shutdown()
        http.server_close()


def test_an_upstream_that_stops_answering_its_health_path_leaves_routing_until_it_answers(
    tmp_path: Path, fake_vllm_python: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hung upstream takes connections and never answers: with ``health_path`` its requests
    get a 503 at once instead of each waiting out a timeout, and it serves again once its
    health path answers."""
    caplog.set_level(logging.INFO, "serving.replica")
    body = {"model": "ext", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with fake_upstream_process("ext") as (url, process):
        text = f"""
cache_dir: {tmp_path}
models:
  ext:
    default_variant: main
    serve: {{health_check: {{interval_s: 0.2, timeout_s: 0.3, failures: 2}}}}
    variants:
      main: {{method: none, upstream: {{url: "{url}", health_path: /health}}}}
"""
        with (
            gateway_on(text, tmp_path / "m.yaml", fake_vllm_python) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            os.kill(process.pid, signal.SIGSTOP)  # hung: connections taken, never answered
            try:
                wait_for(lambda: "went unanswered 2 times in a row" in caplog.text, 10)
                t0 = time.perf_counter()
                refused = client.post("/v1/chat/completions", json=body)
                took = time.perf_counter() - t0
                card = client.get("/v1/models").json()["data"][0]
            finally:
                os.kill(process.pid, signal.SIGCONT)
            wait_for(lambda: "answers again; back in routing" in caplog.text, 10)
            served = client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 503, refused.text
    assert took < 1.0, took
    assert "unreachable" in refused.json()["error"]["message"]
    assert card["quantgate"]["state"] == "unreachable"
    assert f"{url}/health went unanswered 2 times in a row (ReadTimeout" in caplog.text
    assert served.status_code == 200, served.text


def wait_for(done: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
