"""The demo path for real: manifest, llm-compressor job, vLLM on the CPU, gateway, openai SDK.

Slow (minutes): needs ``make install`` and ``make model`` (``make test`` does both).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import ServedGateway, serve_manifest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".quantgate" / "models" / "tiny"
VARIANT = "tiny:gptq-w4a8"
MESSAGES = [{"role": "user", "content": "What does the json module do?"}]

pytestmark = pytest.mark.slow


@dataclass
class Gateway(ServedGateway):
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", timeout=900, max_retries=0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not (MODEL / "config.json").is_file():
        pytest.fail(f"no model at {MODEL}: run `make model` first (make test does)")
    tmp = tmp_path_factory.mktemp("e2e")
    manifest = tmp / "manifest.yaml"
    manifest.write_text(
        f"""
version: 1
cache_dir: {tmp / "cache"}
models:
  tiny:
    source: {MODEL}
    default_variant: gptq-w4a8
    on_missing: {{action: wait, max_wait_s: 900}}
    serve:
      max_model_len: 512
      startup_timeout_s: 600
      # asked every second all through this module, under load too: a probe that fails on a
      # busy vLLM would restart it and show in the restart counts the tests check
      health_check: {{interval_s: 1, timeout_s: 5, failures: 3}}
    variants:
      base: {{method: none}}
      gptq-w4a8:
        method: gptq
        bits: 4
        activation_bits: 8
        calibration: {{samples: 32, max_seq_length: 256}}
  idle:
    source: {MODEL}
    default_variant: base
    serve: {{max_model_len: 256, idle_stop_s: 3}}
    variants:
      base: {{method: none}}
  badarg:
    source: {MODEL}
    default_variant: base
    serve: {{extra_args: ["--no-such-flag"]}}
    variants:
      base: {{method: none}}
  broken:
    source: {tmp / "does-not-exist"}
    default_variant: gptq
    variants:
      gptq: {{method: gptq, bits: 4, activation_bits: 8}}
"""
    )
    with serve_manifest(manifest, tmp / "gateway.log") as served:
        yield Gateway(served.url, served.log, served.process)


def test_first_requests_build_once_then_serve(gateway: Gateway) -> None:
    client = gateway.client()

    def ask(_: int) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(model=VARIANT, messages=MESSAGES, max_tokens=16)  # type: ignore[arg-type]

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    for reply in replies:
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.role == "assistant"
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16
        assert reply.usage.prompt_tokens > 5
    jobs = httpx.get(gateway.url + "/admin/jobs").json()["data"]
    assert [(j["model"], j["variant"], j["state"]) for j in jobs] == [
        ("tiny", "gptq-w4a8", "succeeded")
    ]
    variant = next(
        v for v in httpx.get(gateway.url + "/admin/variants").json()["data"]
        if v["variant"] == "gptq-w4a8"
    )  # fmt: skip
    assert variant["state"] == "ready"
    report = variant["report"]
    assert report["recipe"]["activation_bits"] == 8
    assert report["quantizer"]["libraries"]["llmcompressor"]
    assert Path(report["path"], "config.json").is_file()
    # the default name reaches the same variant
    plain = client.completions.create(model="tiny", prompt="The module", max_tokens=4)
    assert plain.object == "text_completion" and plain.usage is not None
    completion_tokens = sum(r.usage.completion_tokens for r in replies if r.usage)
    completion_tokens += plain.usage.completion_tokens
    labels = {"model": "tiny", "variant": "gptq-w4a8"}
    assert gateway.metric("quantgate_completion_tokens_total", **labels) == completion_tokens
    assert gateway.metric("quantgate_requests_total", status="200", **labels) == 5


@pytest.mark.parametrize("include_usage", [True, False])
def test_streaming_is_metered_exactly(gateway: Gateway, include_usage: bool) -> None:
    labels = {"model": "tiny", "variant": "gptq-w4a8"}
    before = gateway.metric("quantgate_completion_tokens_total", **labels)
    before_prompt = gateway.metric("quantgate_prompt_tokens_total", **labels)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = gateway.client().chat.completions.create(
        model=VARIANT,
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        extra_body={"ignore_eos": True},  # a vLLM-only parameter: the body reaches vLLM as sent
        **options,  # type: ignore[call-overload]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage_chunks = [c for c in chunks if c.usage is not None]
    after = gateway.metric("quantgate_completion_tokens_total", **labels)
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
        usage = usage_chunks[0].usage
        assert usage is not None and usage.completion_tokens == 12
        assert after - before == usage.completion_tokens
        prompt = gateway.metric("quantgate_prompt_tokens_total", **labels) - before_prompt
        assert prompt == usage.prompt_tokens
    else:
        assert usage_chunks == []  # the gateway asked vLLM for usage and kept it to itself
        assert after - before == 12
    assert gateway.metric("quantgate_time_to_first_token_seconds_count", **labels) >= 1


def test_bad_input_gets_clear_errors_and_serving_goes_on(gateway: Gateway) -> None:
    client = gateway.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "broken", "messages": MESSAGES}
    )
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "invalid_recipe"  # refused by its check, before any work
    assert "does-not-exist is not a model folder" in error["message"]
    r = httpx.post(
        gateway.url + "/v1/completions", json={"model": "badarg", "prompt": "x"}, timeout=300
    )
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "vLLM for badarg:base exited with code" in message and "while starting" in message
    assert "--no-such-flag" in message  # vLLM's own complaint, from its log tail
    again = httpx.post(gateway.url + "/v1/completions", json={"model": "badarg", "prompt": "x"})
    assert again.status_code == 502  # the failure is remembered: no retry storm
    assert [r["restarts"] for r in _backends(gateway, "badarg")] == [0]
    reply = client.chat.completions.create(model=VARIANT, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content is not None


def _backends(gateway: Gateway, model: str) -> list[dict[str, Any]]:
    rows = httpx.get(gateway.url + "/admin/backends").json()["data"]
    return [r for r in rows if r["model"] == model]


def _group_alive(pgid: int) -> bool:
    """Whether any live process (zombies aside) is left in the process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.5)


def test_replica_killed_under_load_is_restarted_and_no_request_fails(gateway: Gateway) -> None:
    scale = gateway.url + "/admin/variants/tiny/gptq-w4a8/scale"
    assert httpx.post(scale, json={"replicas": 2}, timeout=900).json()["state"] == "ready"
    rows = _backends(gateway, "tiny")
    assert [r["state"] for r in rows] == ["ready", "ready"]
    assert all(r["kernel"] == "Dynamic4bitLinearKernel" for r in rows)
    victim = rows[0]
    client = gateway.client()

    def ask(_: int) -> str | None:
        reply = client.chat.completions.create(model=VARIANT, messages=MESSAGES, max_tokens=24)  # type: ignore[arg-type]
        return reply.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, i) for i in range(32)]
        time.sleep(1.0)
        os.kill(victim["pid"], signal.SIGKILL)
        answers = [f.result(timeout=300) for f in futures]  # raises if any request failed
    assert len(answers) == 32
    _wait_for(lambda: _backends(gateway, "tiny")[0]["state"] == "ready", timeout=600)
    row = _backends(gateway, "tiny")[0]
    assert row["restarts"] == 1 and row["pid"] != victim["pid"]
    _wait_for(lambda: not _group_alive(victim["pid"]), timeout=60)  # its engine processes too
    assert gateway.metric("quantgate_upstream_retries_total", model="tiny") >= 1
    assert httpx.post(scale, json={"replicas": 1}, timeout=120).json()["state"] == "ready"


def test_a_hung_replica_is_restarted(gateway: Gateway) -> None:
    """A stopped vLLM API server takes connections and never answers: its /health goes
    unanswered 3 times, it is killed with its engine and restarted, and serving goes on."""
    (victim,) = _backends(gateway, "tiny")
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        _wait_for(lambda: _backends(gateway, "tiny")[0]["restarts"] > victim["restarts"], 60)
        _wait_for(lambda: _backends(gateway, "tiny")[0]["state"] == "ready", timeout=600)
    finally:
        if _group_alive(victim["pid"]):
            os.killpg(victim["pid"], signal.SIGCONT)
    (row,) = _backends(gateway, "tiny")
    assert row["restarts"] == victim["restarts"] + 1 and row["pid"] != victim["pid"]
    assert "/health went unanswered 3 times in a row" in row["error"]
    _wait_for(lambda: not _group_alive(victim["pid"]), timeout=60)
    reply = gateway.client().completions.create(model=VARIANT, prompt="The module", max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert "killing it" in gateway.log.read_text()


def test_idle_variant_stops_then_cold_starts_on_the_next_request(gateway: Gateway) -> None:
    client = gateway.client()
    first = client.completions.create(model="idle", prompt="The module", max_tokens=4)
    assert first.usage is not None and first.usage.completion_tokens == 4
    pid = _backends(gateway, "idle")[0]["pid"]
    _wait_for(lambda: _backends(gateway, "idle") == [], timeout=120)
    card = next(c for c in client.models.list().data if c.id == "idle")
    assert card.model_extra is not None and card.model_extra["quantgate"]["state"] == "built"
    t0 = time.perf_counter()
    again = client.completions.create(model="idle", prompt="The module", max_tokens=4)
    cold_start_s = time.perf_counter() - t0
    assert again.usage is not None and again.usage.completion_tokens == 4
    assert _backends(gateway, "idle")[0]["pid"] != pid
    print(f"cold start answered in {cold_start_s:.1f} s")
