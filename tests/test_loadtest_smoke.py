"""The load test on the real stack: gateway, llm-compressor job, vLLM on the CPU, Locust.

Slow (about 3 minutes, most of it building the variant and starting vLLM). Needs
``make install``, ``make model`` and ``make install-load`` (``make test`` does all three).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, metric, require_locust, run_locust, serve_manifest

MODEL = ROOT / ".quantgate" / "models" / "tiny"
LABELS = {"model": "tiny", "variant": "gptq-w4a8"}
MAX_TOKENS = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``quantgate serve`` on a manifest of the demo model's base and W4A8 variants."""
    require_locust()  # before minutes of building and starting
    if not (MODEL / "config.json").is_file():
        pytest.fail(f"no model at {MODEL}: run `make model` first (make test does)")
    tmp = tmp_path_factory.mktemp("load")
    manifest = tmp / "manifest.yaml"
    manifest.write_text(f"""
version: 1
cache_dir: {tmp / "cache"}
models:
  tiny:
    source: {MODEL}
    default_variant: gptq-w4a8
    serve: {{max_model_len: 512, startup_timeout_s: 600}}
    variants:
      base: {{method: none}}
      gptq-w4a8:
        method: gptq
        bits: 4
        activation_bits: 8
        calibration: {{samples: 32, max_seq_length: 256}}
""")
    with serve_manifest(manifest, tmp / "gateway.log") as served:
        yield served.url


def test_smoke_run_has_no_failures_and_counts_every_token(gateway: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    started = httpx.post(gateway + "/admin/variants/tiny/gptq-w4a8/start", timeout=900)
    assert started.status_code == 200 and started.json()["state"] == "ready", started.text
    warm_up_s = time.perf_counter() - t0

    run = run_locust(
        gateway, tmp_path / "report", "--model", "tiny:gptq-w4a8", "--max-tokens",
        str(MAX_TOKENS), "--warmup-timeout", "0", users=4, duration="15s",
    )  # fmt: skip
    print(f"warm-up (quantize, start vLLM) {warm_up_s:.0f} s\n{run.output}")
    assert run.returncode == 0, run.output
    assert all(row["Failure Count"] == "0" for row in run.stats.values())
    for kind in ("chat-stream", "completion-stream"):
        streams = int(run.stats["POST", kind]["Request Count"])
        assert int(run.stats["TTFT", kind]["Request Count"]) == streams > 0
        assert float(run.stats["TTFT", kind]["Median Response Time"]) > 0
        assert int(run.stats["TOKENS/S", kind]["Request Count"]) == streams
        assert float(run.stats["TOKENS/S", kind]["Median Response Time"]) > 0
    assert run.stats["POST", "chat"]["Request Count"] != "0"
    assert run.stats["POST", "completion"]["Request Count"] != "0"
    # the gateway saw every request Locust made, each with MAX_TOKENS tokens (ignore_eos)
    requests = run.requests()
    deadline = time.monotonic() + 10  # a stream's books close when vLLM closes it, after [DONE]
    while metric(gateway, "quantgate_requests_total", status="200", **LABELS) < requests:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert metric(gateway, "quantgate_requests_total", status="200", **LABELS) == requests
    tokens = metric(gateway, "quantgate_completion_tokens_total", **LABELS)
    assert tokens == requests * MAX_TOKENS > 0
    report = (run.out / "report.html").read_text()
    assert "TTFT" in report and "TOKENS/S" in report
