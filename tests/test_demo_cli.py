"""`quantgate demo` helpers on a live gateway (fake vLLM): pick, job and replica lines, metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from conftest import LiveServer
from gateway.cli import demo


def test_demo_picks_a_servable_variant_and_prints_what_happened(
    gateway: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = gateway()
    assert demo._pick(server.url, "auto") == "tiny:gptq"  # first quantized variant, not base
    body = {"model": "tiny:gptq", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).is_success
    demo._print_steps(server.url, "tiny:gptq", demo._base_of(server.url, "tiny:gptq"))
    demo._print_metrics(server.url, "tiny:gptq")
    out = capsys.readouterr().out
    assert "tiny:gptq: quantization job" in out and "succeeded" in out
    assert "vLLM replica 0" in out and "ready in" in out
    assert (
        'quantgate_requests_total{endpoint="chat",model="tiny",status="200",variant="gptq"}' in out
    )
