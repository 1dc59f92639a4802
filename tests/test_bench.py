"""``quantgate bench``'s measuring and table, on the fake quantizer and the fake vLLM server.

The real numbers come from real vLLM (docs/benchmarks.md); here: every row is filled
from the right place (the build's report, the served replica, its process group), a variant
this machine cannot serve is measured for perplexity only and says why, and the servers are
stopped between variants.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import make_fleet, write_manifest
from gateway.cli.bench import table
from serving.bench import BenchRow, Load, run_bench
from serving.hardware import Hardware

AVX2 = Hardware("cpu", frozenset({"avx2"}))  # no AVX-512: W4A16 does not serve here


def test_rows_of_served_and_unservable_variants(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    more = "      w4a8: {method: gptq, bits: 4, activation_bits: 8}\n"
    manifest = write_manifest(tmp_path, model_dir, more_variants=more)
    fleet = make_fleet(manifest, fake_vllm_python, AVX2)
    names = [("tiny", "base"), ("tiny", "w4a8"), ("tiny", "gptq")]
    load = Load(requests=8, concurrency=4, max_tokens=16)

    async def measure() -> tuple[list[BenchRow], list[str]]:
        try:
            rows = await run_bench(fleet, names, load)
            return rows, [r["state"] for r in fleet.replica_rows()]
        finally:
            await fleet.aclose()

    (base, w4a8, gptq), states = asyncio.run(measure())
    assert "ready" not in states  # each server was stopped after its variant
    for row in (base, w4a8):  # served: speed, readiness and memory of a live server
        assert row.note == "", row.note
        assert row.tokens_per_s_1 and row.tokens_per_s_n and row.tokens_per_s_n > 0
        assert row.ready_s is not None and row.peak_rss_bytes and row.peak_rss_bytes > 2**20
    assert base.perplexity == 100.0 and base.ppl_increase == 0.0  # the fake's base PPL
    assert w4a8.perplexity == 101.0 and w4a8.ppl_increase is not None
    assert abs(w4a8.ppl_increase - 0.01) < 1e-9  # from the build's report
    assert gptq.tokens_per_s_1 is None and "AVX-512" in gptq.note  # built, not served
    assert gptq.perplexity == 101.0
    text = table([base, w4a8, gptq], load)
    assert "tiny:w4a8" in text and "W4A8" in text and "+1.00%" in text
    assert "tiny:gptq: not served here" in text
