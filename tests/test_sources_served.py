"""Model sources for real, through the gateway: SmolLM2-135M-Instruct from its GGUF file
(imported by a job, quantized to W8A8 by another, served by vLLM on the CPU) and a Hub
repository (the trained demo model on a local server that speaks the Hub's API, downloaded by a
job with the real huggingface_hub client, served by vLLM).

Slow (minutes): needs ``make install``, ``make model`` and ``make tiny-model``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.hub_server import HubServer, add_repo, serve_hub

from conftest import ServedGateway, serve_manifest

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / ".quantgate" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = ROOT / ".quantgate" / "models" / "tiny"
QUESTION = "What is the capital of France? Answer in one word."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubServer, str]]:
    if not (TINY / "config.json").is_file():
        pytest.fail(f"no model at {TINY}: run `make tiny-model` first (make test does)")
    root = tmp_path_factory.mktemp("hub")
    commit = add_repo(root, "quantgate-tests/tiny", TINY, branch="main")
    with serve_hub(root) as server:
        yield server, commit


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, hub: tuple[HubServer, str]
) -> Iterator[ServedGateway]:
    if not GGUF.is_file():
        pytest.fail(f"no model at {GGUF}: run `make model` first (make test does)")
    tmp = tmp_path_factory.mktemp("sources")
    manifest = tmp / "manifest.yaml"
    manifest.write_text(f"""
version: 1
cache_dir: {tmp / "cache"}
models:
  smol:
    source: {GGUF}
    default_variant: w8a8
    on_missing: {{action: wait, max_wait_s: 1200}}
    serve: {{max_model_len: 1024, startup_timeout_s: 600}}
    variants:
      w8a8: {{method: rtn, bits: 8, activation_bits: 8}}
  hubbed:
    source: hf://quantgate-tests/tiny@main
    default_variant: base
    serve: {{max_model_len: 256, startup_timeout_s: 600}}
    variants:
      base: {{method: none}}
""")
    env = {"HF_ENDPOINT": hub[0].url, "HF_HOME": str(tmp / "hf-home")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the gateway's jobs inherit them
    try:
        with serve_manifest(manifest, tmp / "gateway.log") as served:
            yield served
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def chat(gateway: ServedGateway, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 16,
        "temperature": 0,
    }
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=1500)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def jobs(gateway: ServedGateway) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(gateway.url + "/admin/jobs").json()["data"]
    return found


def test_a_gguf_source_is_imported_quantized_and_answers_right(gateway: ServedGateway) -> None:
    answer = chat(gateway, "smol")["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer
    smol = {(j["variant"], j["state"], j["recipe"]["method"]) for j in jobs(gateway)
            if j["model"] == "smol"}  # fmt: skip
    assert smol == {("(source)", "succeeded", "import-gguf"), ("w8a8", "succeeded", "rtn")}
    variant = next(
        v for v in httpx.get(gateway.url + "/admin/variants").json()["data"]
        if v["model"] == "smol"
    )  # fmt: skip
    report = variant["report"]
    assert variant["kernel"]["kernel"] == "CPUInt8ScaledMMLinearKernel"
    assert "/.sources/gguf-" in report["source"]
    ppl = report["perplexity"]  # the base measured by the import, reused by the build
    assert 15 < ppl["base"]["domains"]["docs"]["perplexity"] < 35, ppl  # SmolLM2: 24.9
    assert 0 < ppl["increase"] < 0.10, ppl  # int8: +3 % to +5 % by domain


def test_a_hub_source_is_downloaded_once_and_served(
    gateway: ServedGateway, hub: tuple[HubServer, str]
) -> None:
    server, commit = hub
    reply = chat(gateway, "hubbed:base")
    assert reply["usage"]["completion_tokens"] > 0
    (job,) = [j for j in jobs(gateway) if j["model"] == "hubbed"]
    assert (job["variant"], job["state"], job["recipe"]["repo"]) == (
        "(source)", "succeeded", "quantgate-tests/tiny"
    )  # fmt: skip
    folder = Path(job["output"])
    report = (folder / "report.json").read_text()
    assert commit in report  # the commit the branch resolved to
    assert (folder / "model.safetensors").is_file()
    downloads = [r for r in server.requests if r.path.endswith("model.safetensors")]
    chat(gateway, "hubbed")  # served from the cache: nothing is asked of the Hub again
    assert [r for r in server.requests if r.path.endswith("model.safetensors")] == downloads
