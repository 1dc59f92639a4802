"""``quantgate bench``'s measuring and table, on the fake quantizer and the fake vLLM server.

The real numbers come from real vLLM (docs/benchmarks.md); here: every row is filled
from the right place (the build's report, the served replica, its process group), a variant
this machine cannot serve is measured for perplexity only and says why, and the servers are
stopped between variants. The command, on fake upstreams: a variant that fails keeps its row
(exit 1) and the others are measured; unknown names and counts below 1 exit 2.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import fake_upstream, free_port, make_fleet, write_manifest
from gateway.cli import main
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


def test_a_variant_over_its_quality_budget_is_measured_not_failed(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    tight = "      tight: {method: gptq, bits: 4, activation_bits: 8, max_ppl_increase: 0.001}\n"
    fleet = make_fleet(write_manifest(tmp_path, model_dir, more_variants=tight), fake_vllm_python)

    async def measure() -> list[BenchRow]:
        try:
            return await run_bench(fleet, [("tiny", "tight")], Load(2, 1, 4))
        finally:
            await fleet.aclose()

    (row,) = asyncio.run(measure())
    assert row.perplexity == 101.0 and row.tokens_per_s_1 is None and not row.failed
    assert row.note.startswith("not served: held-out perplexity") and "+0.1%" in row.note


def upstream_manifest(tmp_path: Path, url: str) -> Path:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = tmp_path / "bench.yaml"
    path.write_text(f"""
cache_dir: {tmp_path / "cache"}
models:
  up:
    default_variant: good
    variants:
      good: {{method: none, upstream: {{url: "{url}", model: served}}}}
      refused: {{method: none, upstream: {{url: "{url}", model: nope}}}}
      gone: {{method: none, upstream: {{url: "{dead}", model: served}}}}
""")
    return path


def test_a_failing_variant_keeps_the_other_rows_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--requests", "4", "--concurrency", "2", "--max-tokens", "4", "--json"]
    with fake_upstream("served") as url:
        code = main(["bench", str(upstream_manifest(tmp_path, url)), *flags])
    out, err = capsys.readouterr()
    assert code == 1, err
    good, refused, gone = json.loads(out)
    assert good["tokens_per_s_1"] > 0 and good["tokens_per_s_n"] > 0  # measured all the same
    assert good["note"] == "" and not good["failed"]
    assert refused["failed"] and refused["tokens_per_s_1"] is None
    assert refused["note"] == "measuring failed: 404 The model `nope` does not exist."
    assert gone["failed"] and "ConnectError" in gone["note"]
    assert err.strip() == "quantgate bench: failed: up:refused, up:gone (see the notes)"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "nope"], "--model 'nope' is not in the manifest (its models: up)"),
        (["--variant", "good", "--variant", "typo"], "--variant 'typo': not in the manifest"),
        (["--model", "up", "--variant", "typo"], "not in model 'up' (its variants: good, refused"),
    ],
)
def test_unknown_names_exit_2_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["bench", str(upstream_manifest(tmp_path, "http://127.0.0.1:1")), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantgate bench: ") and message in err


@pytest.mark.parametrize("flag", ["--concurrency", "--requests", "--max-tokens"])
def test_counts_below_one_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", str(tmp_path / "absent.yaml"), flag, "0"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be at least 1, not 0" in capsys.readouterr().err
