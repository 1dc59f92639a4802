"""Kernel tuning at a variant's first launch, through the gateway, on the fake vLLM.

The fake cannot run kernels: it logs ``Using <Kernel> for ...`` for the first kernel of
FAKE_KERNELS that VLLM_DISABLED_KERNELS leaves, and decodes at that kernel's FAKE_KERNEL_ITL_S,
so the tuner's launches, log parsing, winner, storage and hand-over run as on a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer
from serving.hardware import Gpu, Hardware

Start = Callable[..., LiveServer]
H100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100 80GB HBM3", 90, 81_559),))
TWO_H100 = Hardware("cuda", gpus=(*H100.gpus, Gpu(1, "NVIDIA H100 80GB HBM3", 90, 81_559)))
H100_AND_H200 = Hardware("cuda", gpus=(*H100.gpus, Gpu(1, "NVIDIA H200", 90, 143_771)))
KEY = "NVIDIA H100 80GB HBM3|vllm 0.0.0+fake"
MACHETE, MARLIN = "MacheteLinearKernel", "MarlinLinearKernel"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def gptq_model(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A GPTQ W4A16 checkpoint: on compute capability 9.0, Machete by default, Marlin too."""
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("FAKE_KERNELS", f"{MACHETE},{MARLIN}")
    return model_dir


def variant(server: LiveServer, name: str = "base") -> dict[str, Any]:
    rows = httpx.get(server.url + "/admin/variants").json()["data"]
    row: dict[str, Any] = next(r for r in rows if r["variant"] == name)
    return row


def tune_logs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / ".logs").glob("*-tune-*.log"))


def test_first_launch_measures_both_kernels_and_launches_the_faster(
    gateway: Start, gptq_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.004,{MARLIN}=0.001")
    server = gateway(hardware=H100)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=300).is_success
    row = variant(server)
    result = row["kernel"]["measured"][KEY]
    assert result["winner"] == MARLIN and result["kernel"] == MARLIN
    assert set(result["candidates"]) == {MACHETE, MARLIN}
    assert result["candidates"][MARLIN]["used"] == MARLIN  # read from the fake's log
    assert result["candidates"][MACHETE]["used"] == MACHETE
    faster, slower = result["candidates"][MARLIN], result["candidates"][MACHETE]
    assert faster["tok_s_1"] > slower["tok_s_1"] and faster["tok_s_64"] > slower["tok_s_64"]
    assert row["kernel"]["kernel"] == MARLIN
    assert row["kernel"]["env"] == {"VLLM_DISABLED_KERNELS": MACHETE}
    [replica] = row["replicas"]  # Marlin ran first, so it was started again to serve
    assert "-tune-" not in replica["log"]
    assert f"Using {MARLIN}" in Path(replica["log"]).read_text()
    assert len(tune_logs(tmp_path)) == 2
    card = next(c for c in httpx.get(server.url + "/v1/models").json()["data"] if c["id"] == "tiny")
    assert card["quantgate"]["kernel"] == MARLIN
    assert card["quantgate"]["kernel_measured"][KEY]["winner"] == MARLIN


def test_a_winning_default_keeps_running_as_the_first_replica(
    gateway: Start, gptq_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.001,{MARLIN}=0.004")
    server = gateway(hardware=H100)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = variant(server)
    assert row["kernel"]["measured"][KEY]["winner"] == MACHETE
    assert (row["kernel"]["kernel"], row["kernel"]["env"]) == (MACHETE, {})
    [replica] = row["replicas"]
    assert replica["log"].endswith(f"-tune-{MACHETE}.log")  # the tuner's server, handed over
    assert replica["state"] == "ready" and replica["gpus"] == "0"
    backends = httpx.get(server.url + "/admin/backends").json()
    assert backends["placement"] == {"tiny:base#0": [0]}


def test_an_idle_gpu_of_the_same_kind_measures_the_alternative_at_the_same_time(
    gateway: Start, gptq_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.001,{MARLIN}=0.004")
    monkeypatch.setenv("FAKE_START_DELAY_S", "1.5")
    server = gateway(hardware=TWO_H100)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = variant(server)
    result = row["kernel"]["measured"]["NVIDIA H100 80GB HBM3|vllm 0.0.0+fake"]
    runs = result["candidates"]
    assert (runs[MARLIN]["gpus"], runs[MACHETE]["gpus"]) == ("1", "0")
    assert runs[MARLIN]["ready_s"] < 2 * 1.5 + 1  # started together, not one after the other
    assert result["winner"] == MACHETE
    backends = httpx.get(server.url + "/admin/backends").json()
    assert backends["placement"] == {"tiny:base#0": [0]}  # the spare GPU is given back


def test_a_gpu_of_another_kind_is_not_used_for_measuring(
    gateway: Start, gptq_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.004,{MARLIN}=0.001")
    server = gateway(hardware=H100_AND_H200)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = variant(server)
    runs = row["kernel"]["measured"][KEY]["candidates"]
    assert (runs[MARLIN]["gpus"], runs[MACHETE]["gpus"]) == ("0", "0")
    assert httpx.get(server.url + "/admin/backends").json()["placement"] == {"tiny:base#0": [0]}


def test_a_stored_result_is_reused_at_the_next_launch(
    gateway: Start, gptq_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.004,{MARLIN}=0.001")
    first = gateway(hardware=H100)
    assert httpx.post(first.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    first.__exit__()
    assert len(tune_logs(tmp_path)) == 2
    second = gateway(hardware=H100)  # a new gateway process on the same cache
    assert httpx.post(second.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    assert len(tune_logs(tmp_path)) == 2  # nothing measured again
    assert variant(second)["kernel"]["kernel"] == MARLIN


def test_a_pinned_kernel_is_launched_without_tuning(
    gateway: Start, gptq_model: Path, tmp_path: Path
) -> None:
    server = gateway(hardware=H100, serve=", kernel: MarlinLinearKernel")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = variant(server)
    assert (row["kernel"]["kernel"], row["kernel"]["pinned"]) == (MARLIN, MARLIN)
    assert row["kernel"]["measured"] == {} and tune_logs(tmp_path) == []
    assert f"Using {MARLIN}" in Path(row["replicas"][0]["log"]).read_text()


def test_a_pinned_kernel_vllm_does_not_offer_is_a_clear_error(
    gateway: Start, gptq_model: Path
) -> None:
    server = gateway(hardware=H100, serve=", kernel: ExllamaLinearKernel")
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert r.status_code >= 400
    assert "ExllamaLinearKernel is not a kernel vLLM offers" in r.json()["error"]["message"]


def test_serve_env_reaches_vllm(gateway: Start) -> None:
    server = gateway(serve=", env: {VLLM_USE_FLASHINFER_SAMPLER: '0'}")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = variant(server)
    assert row["kernel"]["measured"] == {}  # on the CPU nothing is tuned
    assert "env VLLM_USE_FLASHINFER_SAMPLER=0" in Path(row["replicas"][0]["log"]).read_text()
