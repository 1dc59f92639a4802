"""The quality gate: a variant over its perplexity budget is built but refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import LiveServer
from serving.build import increases
from serving.hardware import Gpu, Hardware
from serving.manifest import Variant
from serving.quality import PerplexityCache, fingerprint, over_budget

Start = Callable[..., LiveServer]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
GATED = "      gated: {method: rtn, bits: 4, activation_bits: 8, max_ppl_increase: 5%}\n"


def _report(base: float, found: float) -> dict[str, object]:
    ppl = {"base": {"perplexity": base}, "variant": {"perplexity": found}}
    return {"perplexity": {**ppl, "increase": found / base - 1}}


def test_over_budget_says_by_how_much() -> None:
    gated = Variant.model_validate({"method": "rtn", "max_ppl_increase": "5%"})
    assert over_budget(gated, _report(100, 104)) is None
    reason = over_budget(gated, _report(100, 112))
    assert reason is not None and "+12.0% over the base's 100.00" in reason and "+5.0%" in reason
    assert "no perplexity was measured" in (over_budget(gated, {"perplexity": {}}) or "")
    free = Variant.model_validate({"method": "rtn"})
    assert over_budget(free, _report(100, 500)) is None


def test_the_gate_reads_the_worst_domain() -> None:
    base = {
        "perplexity": 20.0,
        "domains": {"docs": {"perplexity": 30.0}, "chat": {"perplexity": 10.0}},
    }
    variant = {
        "perplexity": 21.0,
        "domains": {"docs": {"perplexity": 30.3}, "chat": {"perplexity": 11.2}},
    }
    by_domain = increases(base, variant)
    assert by_domain == {"docs": pytest.approx(0.01), "chat": pytest.approx(0.12)}
    report = {"perplexity": {"base": base, "variant": variant, "increase": max(by_domain.values()),
                             "increase_by_domain": by_domain}}  # fmt: skip
    gated = Variant.model_validate({"method": "rtn", "max_ppl_increase": "5%"})
    reason = over_budget(gated, report)
    assert reason is not None and "on chat 11.20 is +12.0% over the base's 10.00" in reason
    assert increases({"perplexity": 10.0}, {"perplexity": 11.0}) == {"all": pytest.approx(0.1)}


def test_base_perplexity_cache_follows_the_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    cache = PerplexityCache(tmp_path / "ppl", "256|128|texts/1")
    assert cache.get(model_dir) is None
    cache.put(model_dir, {"perplexity": 42.0})
    assert cache.get(model_dir) == {"perplexity": 42.0, "source": str(model_dir)}
    assert fingerprint(model_dir, "256|128|texts/1") != fingerprint(model_dir, "256|128|texts/2")
    (model_dir / "model.safetensors").write_bytes(b"retrained")
    assert cache.get(model_dir) is None


def test_variant_over_budget_is_refused_and_says_so(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PPL_INCREASE", "0.30")
    server = gateway(more_variants=GATED)
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:gated"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "variant_over_quality_budget"
    assert "+30.0% over the base's 100.00, beyond its budget of +5.0%" in error["message"]
    cards = {c["id"]: c["quantgate"] for c in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards["tiny:gated"]["state"] == "over_budget"
    assert "max_ppl_increase" in cards["tiny:gated"]["error"]
    admin = httpx.get(server.url + "/admin/variants").json()["data"]
    gated = next(v for v in admin if v["variant"] == "gated")
    assert gated["state"] == "over_budget" and gated["max_ppl_increase"] == 0.05
    assert gated["report"]["perplexity"]["increase"] == pytest.approx(0.30)


def test_variant_within_budget_is_served(gateway: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PPL_INCREASE", "0.02")
    server = gateway(more_variants=GATED)
    r = httpx.post(
        server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:gated"}, timeout=30
    )
    assert r.status_code == 200, r.text


FP8 = "      fp8: {method: fp8, max_ppl_increase: '5%'}\n"
H100 = Hardware("cuda", gpus=(Gpu(0, "H100", 90, 81_559),))


@pytest.mark.parametrize(("increase", "status"), [("0.02", 200), ("0.30", 503)])
def test_fp8_is_measured_through_its_server_before_it_takes_requests(
    gateway: Start, monkeypatch: pytest.MonkeyPatch, increase: str, status: int
) -> None:
    """vLLM quantizes FP8 at load: its first server is measured (a job, through that server's
    own logprobs) before any request reaches it, and the gate holds for what is served."""
    monkeypatch.setenv("FAKE_PPL_INCREASE", increase)
    server = gateway(hardware=H100, more_variants=FP8)
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:fp8"},
                   timeout=60)  # fmt: skip
    assert r.status_code == status, r.text
    [job] = [j for j in httpx.get(server.url + "/admin/jobs").json()["data"]
             if j["variant"] == "fp8"]  # fmt: skip
    assert job["state"] == "succeeded" and job["recipe"]["method"] == "fp8"
    assert job["recipe"]["source"].endswith("/models/tiny")  # the weights vLLM quantizes
    admin = httpx.get(server.url + "/admin/variants").json()["data"]
    fp8 = next(v for v in admin if v["variant"] == "fp8")
    assert fp8["report"]["measured_through"].startswith("http://127.0.0.1:")
    assert fp8["report"]["perplexity"]["increase"] == pytest.approx(float(increase))
    if status == 503:
        assert r.json()["error"]["code"] == "variant_over_quality_budget"
        assert fp8["state"] == "over_budget"
