"""The gateway on real sockets, in front of the fake vLLM started by the real launcher."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import LiveServer
from gateway.app import QuantgateApp
from serving.hardware import Gpu, Hardware

Start = Callable[..., LiveServer]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}


def sample(server: LiveServer, name: str, **labels: str) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


def test_models_lists_every_name_with_state(gateway: Start) -> None:
    server = gateway()
    cards = httpx.get(server.url + "/v1/models").json()["data"]
    by_id = {c["id"]: c["quantgate"] for c in cards}
    assert set(by_id) == {"tiny", "tiny:base", "tiny:gptq", "tiny:awq"}
    assert by_id["tiny"]["variant"] == "base"
    assert by_id["tiny:base"]["state"] == "built"
    assert by_id["tiny:gptq"]["state"] == "missing"


def test_chat_non_streaming_passes_through_and_meters(gateway: Start) -> None:
    server = gateway()
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "alpha beta gamma delta epsilon"
    assert body["usage"]["completion_tokens"] == 5
    labels = {"model": "tiny", "variant": "base"}
    assert sample(server, "quantgate_completion_tokens_total", **labels) == 5
    assert (
        sample(server, "quantgate_prompt_tokens_total", **labels) == body["usage"]["prompt_tokens"]
    )
    assert sample(server, "quantgate_requests_total", endpoint="chat", status="200", **labels) == 1


def _stream(server: LiveServer, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def test_stream_without_usage_is_metered_but_usage_chunk_hidden(gateway: Start) -> None:
    server = gateway()
    lines = _stream(server, {**CHAT, "stream": True})
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(str(line)[6:]) for line in lines[:-1]]
    assert all(e["choices"] for e in events)  # no usage-only chunk for this client
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == (
        "alpha beta gamma delta epsilon"
    )
    labels = {"model": "tiny", "variant": "base"}
    assert sample(server, "quantgate_completion_tokens_total", **labels) == 5
    assert sample(server, "quantgate_time_to_first_token_seconds_count", **labels) == 1


def test_stream_with_usage_keeps_the_usage_chunk(gateway: Start) -> None:
    server = gateway()
    body = {**CHAT, "model": "tiny:base", "stream": True, "stream_options": {"include_usage": True}}
    lines = _stream(server, body)
    usage_event = json.loads(str(lines[-2])[6:])
    assert usage_event["choices"] == [] and usage_event["usage"]["completion_tokens"] == 5
    labels = {"model": "tiny", "variant": "base"}
    assert sample(server, "quantgate_completion_tokens_total", **labels) == 5


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (json.dumps({"messages": []}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "nope", "messages": []}).encode(), 404, "model_not_found"),
        (json.dumps({"model": "tiny:nope", "messages": []}).encode(), 404, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_errors(
    gateway: Start, body: bytes, status: int, code: str
) -> None:
    server = gateway()
    r = httpx.post(server.url + "/v1/chat/completions", content=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/admin/variants/tiny/gptq/scale", {"replicas": -1}, 400, "invalid_request"),
    ],
)
def test_the_frameworks_own_errors_are_openai_errors(
    gateway: Start, method: str, path: str, body: object, status: int, code: str
) -> None:
    server = gateway()
    r = httpx.request(method, server.url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_an_unexpected_error_is_a_500_body_and_leaves_no_request_in_flight(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = gateway()
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    app = server.server.config.app
    assert isinstance(app, QuantgateApp)
    fleet = app.state.fleet

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fleet, "acquire", broken)
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error" and "RuntimeError" in r.text
    labels = {"model": "tiny", "variant": "base"}
    assert sample(server, "quantgate_requests_in_flight", **labels) == 0
    status = {**labels, "endpoint": "chat", "status": "500"}
    assert sample(server, "quantgate_requests_total", **status) == 1


def test_oversized_body_is_413(gateway: Start) -> None:
    server = gateway(max_body_bytes=2048)
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x" * 5000})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_missing_variant_is_built_once_for_many_requests(gateway: Start) -> None:
    server = gateway()
    body = {**CHAT, "model": "tiny:gptq"}

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url + "/v1/chat/completions"
            return await asyncio.gather(*(client.post(url, json=body) for _ in range(20)))

    responses = asyncio.run(many())
    assert [r.status_code for r in responses] == [200] * 20
    jobs = httpx.get(server.url + "/admin/jobs").json()["data"]
    assert len(jobs) == 1 and jobs[0]["state"] == "succeeded"
    assert jobs[0]["variant"] == "gptq"
    assert sample(server, "quantgate_jobs", state="succeeded") == 1


def test_reject_policy_answers_503_with_retry_after(gateway: Start) -> None:
    server = gateway(on_missing="reject")
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:awq"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert r.json()["error"]["code"] == "variant_not_ready"


def test_failed_job_is_reported_and_other_variants_keep_serving(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QUANT_FAIL", "1")
    server = gateway()
    r = httpx.post(
        server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:awq"}, timeout=30
    )
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "variant_build_failed"
    assert "fake calibration failure" in error["message"]
    card = next(
        c for c in httpx.get(server.url + "/v1/models").json()["data"] if c["id"] == "tiny:awq"
    )
    assert card["quantgate"]["state"] == "failed"
    ok = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert ok.status_code == 200


def test_backend_that_exits_at_start_reports_its_log(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EXIT_AT_START", "1")
    server = gateway()
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "exited with code 3 while starting" in message
    assert "fake start-up failure (bad argument)" in message
    monkeypatch.delenv("FAKE_EXIT_AT_START")  # the cause fixed: an admin start retries it
    started = httpx.post(server.url + "/admin/variants/tiny/base/start", timeout=30)
    assert started.json()["state"] == "ready", started.text
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success


def test_w4a16_refused_fast_on_a_cpu_without_avx512(gateway: Start) -> None:
    server = gateway(hardware=Hardware("cpu", frozenset({"avx2"})))
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:gptq"})
    assert r.status_code == 503
    assert "AVX-512" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/admin/jobs").json()["data"] == []


def test_fp8_is_refused_on_the_cpu_and_quantized_at_load_on_a_gpu(
    gateway: Start, model_dir: Path
) -> None:
    fp8 = "      fp8: {method: fp8}\n"
    cpu = gateway(more_variants=fp8)
    r = httpx.post(cpu.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:fp8"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "variant_unsupported_here"
    assert "static_scaled_fp8_quant" in r.json()["error"]["message"]
    h100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100", 90, 81_559),))
    gpu = gateway(hardware=h100, more_variants=fp8)
    r = httpx.post(gpu.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:fp8"}, timeout=60)
    assert r.status_code == 200, r.text
    row = next(
        v for v in httpx.get(gpu.url + "/admin/variants").json()["data"] if v["variant"] == "fp8"
    )
    assert row["kernel"]["quantization"] == "fp8"  # vLLM's --quantization fp8 on the base weights
    # nothing was built: the one job measured the base weights through the FP8 server
    assert row["report"]["measured_through"] == row["replicas"][0]["url"], row["report"]
    assert row["report"]["size_bytes"] == row["report"]["source_size_bytes"]  # no new weights
    log = Path(row["replicas"][0]["log"]).read_text()
    assert f"fake vLLM for {model_dir}" in log


def test_gguf_on_vllm_cpu_is_listed_as_unsupported_with_the_reason(gateway: Start) -> None:
    server = gateway(more_variants="      q4km: {method: gguf, gguf_type: q4_k_m}\n")
    card = next(
        c for c in httpx.get(server.url + "/v1/models").json()["data"] if c["id"] == "tiny:q4km"
    )
    assert card["quantgate"]["state"] == "unsupported" and card["quantgate"]["method"] == "gguf"
    assert "vllm-gguf-plugin has CUDA and Triton kernels only" in card["quantgate"]["error"]
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:q4km"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "variant_unsupported_here"
    assert httpx.get(server.url + "/admin/jobs").json()["data"] == []  # nothing built for it


def test_stream_that_breaks_ends_with_an_error_event(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BREAK_AFTER", "2")
    server = gateway()
    lines = _stream(server, {**CHAT, "stream": True})
    assert lines[-1] == "data: [DONE]"
    assert json.loads(str(lines[-2])[6:])["error"]["code"] == "stream_interrupted"
    labels = {"model": "tiny", "variant": "base"}
    assert sample(server, "quantgate_upstream_errors_total", **labels) == 1


def test_admin_needs_the_key_when_one_is_set(gateway: Start) -> None:
    server = gateway(admin_key="s3cret")
    assert httpx.get(server.url + "/admin/jobs").status_code == 401
    ok = httpx.get(server.url + "/admin/jobs", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_metrics_and_health(gateway: Start) -> None:
    server = gateway()
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    assert "quantgate_jobs" in text


def test_client_disconnect_cancels_the_backend_stream(
    gateway: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "cancelled"
    monkeypatch.setenv("FAKE_CANCEL_FILE", str(marker))
    monkeypatch.setenv("FAKE_ITL_S", "0.1")
    server = gateway()
    body = {**CHAT, "stream": True, "max_tokens": 100}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # a token arrived; now hang up
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the backend kept generating for a gone client"
        time.sleep(0.05)
    labels = {"model": "tiny", "variant": "base", "endpoint": "chat", "status": "499"}
    deadline = time.monotonic() + 5
    while sample(server, "quantgate_requests_total", **labels) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_client_that_leaves_after_done_counts_as_a_whole_answer(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LINGER_S", "5")  # the backend holds the stream open after [DONE]
    server = gateway()
    body = {**CHAT, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                break  # what Locust does at the end of a run: hang up once it has the answer
    labels = {"model": "tiny", "variant": "base", "endpoint": "chat"}
    deadline = time.monotonic() + 5
    while not any(
        sample(server, "quantgate_requests_total", **labels, status=s) for s in ("200", "499")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sample(server, "quantgate_requests_total", **labels, status="200") == 1
    assert sample(server, "quantgate_completion_tokens_total", model="tiny", variant="base") == 4


def test_graceful_shutdown_lets_an_open_stream_finish(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ITL_S", "0.05")
    server = gateway()
    body = {**CHAT, "stream": True, "max_tokens": 30}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        server.server.should_exit = True  # what SIGTERM does: stop accepting, drain, then exit
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) == 30  # 29 more tokens + [DONE]: nothing was cut off
    with pytest.raises(httpx.TransportError):
        httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=5)
