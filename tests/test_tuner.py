"""Kernel tuning: the winner rule, the environment of each candidate, the stored results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.errors import VariantUnsupported
from serving.hardware import Gpu, Hardware
from serving.kernels import KernelChoice
from serving.launcher import LaunchSpec
from serving.manifest import Method, Variant
from serving.store import VariantStore
from serving.tuner import (
    Measurement,
    candidates,
    from_stored,
    kernel_env,
    pick_winner,
    pinned,
    tuning_key,
    used_kernel,
)

HOPPER = KernelChoice("gptq", "MacheteLinearKernel", alternatives=("MarlinLinearKernel",))
MACHETE, MARLIN = "MacheteLinearKernel", "MarlinLinearKernel"


def m(one: float, many: float) -> Measurement:
    return Measurement(one, many, 100.0, None)


def test_candidates_run_alternatives_first_and_the_default_last() -> None:
    assert candidates(HOPPER) == [MARLIN, MACHETE]


def test_an_alternative_that_is_faster_at_both_loads_wins() -> None:
    assert pick_winner(MACHETE, {MACHETE: m(249, 6647), MARLIN: m(291, 8614)}) == MARLIN


def test_a_kernel_faster_at_one_stream_but_slower_at_64_does_not_win() -> None:
    # vLLM 0.26 on an H100, 8B GPTQ compressed-tensors (../shared/gpu/README.md)
    assert pick_winner(MACHETE, {MACHETE: m(236, 9139), MARLIN: m(281, 8779)}) == MACHETE


def test_ties_go_to_the_default() -> None:
    assert pick_winner(MACHETE, {MARLIN: m(200, 8000), MACHETE: m(200, 8000)}) == MACHETE


def test_without_a_default_measurement_the_best_geometric_mean_wins() -> None:
    winner = pick_winner(MACHETE, {MARLIN: m(100, 9000), "ExllamaLinearKernel": m(300, 1000)})
    assert winner == MARLIN
    with pytest.raises(ValueError):
        pick_winner(MACHETE, {})


def test_each_candidate_disables_the_others_and_the_default_changes_nothing() -> None:
    assert kernel_env(HOPPER, MACHETE) == {}
    assert kernel_env(HOPPER, MARLIN) == {"VLLM_DISABLED_KERNELS": MACHETE}
    three = KernelChoice("gptq", "A", alternatives=("B", "C"), env={"X": "1"})
    assert kernel_env(three, "C") == {"X": "1", "VLLM_DISABLED_KERNELS": "B,A"}


def test_a_pin_sets_the_environment_and_an_unknown_kernel_is_an_error() -> None:
    choice = pinned(HOPPER, MARLIN)
    assert (choice.kernel, choice.env) == (MARLIN, {"VLLM_DISABLED_KERNELS": MACHETE})
    assert choice.alternatives == (MACHETE,)
    assert "pinned" in choice.reason
    assert pinned(HOPPER, MACHETE).env == {}
    with pytest.raises(VariantUnsupported, match="ExllamaLinearKernel is not a kernel"):
        pinned(HOPPER, "ExllamaLinearKernel")


def test_the_kernel_is_read_from_vllms_log() -> None:
    text = (
        "INFO 11-24 10:00:01 [core.py:117] Initializing a V1 LLM engine (v0.26.0) with config\n"
        "INFO 11-24 10:00:02 [topk_topp_sampler.py:50] Using FlashInfer for top-p & top-k\n"
        "INFO 11-24 10:00:09 [compressed_tensors_wNa16.py:137] Using MarlinLinearKernel for "
        "CompressedTensorsWNA16\n"
    )
    assert used_kernel(text) == MARLIN
    assert used_kernel("no kernel here") is None


def test_the_key_names_the_gpu_its_count_and_the_vllm_version(tmp_path: Path) -> None:
    hw = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100 80GB HBM3", 90, 81_559),
                                Gpu(1, "NVIDIA H100 80GB HBM3", 90, 81_559)))  # fmt: skip

    def spec(gpus: str) -> LaunchSpec:
        return LaunchSpec(tmp_path, ("m",), 1, tmp_path / "log", env={"CUDA_VISIBLE_DEVICES": gpus})

    assert tuning_key(hw, spec("1"), "0.26.0") == "NVIDIA H100 80GB HBM3|vllm 0.26.0"
    assert tuning_key(hw, spec("0,1"), "0.26.0") == "NVIDIA H100 80GB HBM3 x2|vllm 0.26.0"


def test_optimize_for_picks_the_kernel_that_wins_at_the_load_served() -> None:
    # H200, vLLM 0.26, 8B-shape GPTQ W4A16: Marlin +16 % at 1 stream, Machete +10 % at 64
    h200 = {MACHETE: m(268, 8752), MARLIN: m(310, 7943)}
    assert pick_winner(MACHETE, h200) == MACHETE  # balanced: Marlin is slower at 64
    assert pick_winner(MACHETE, h200, "latency") == MARLIN
    assert pick_winner(MACHETE, h200, "throughput") == MACHETE
    assert pick_winner(MACHETE, {MACHETE: m(300, 8000), MARLIN: m(300, 7000)}, "latency") == (
        MACHETE  # a tie: vLLM's default
    )


def test_a_stored_tuning_is_read_again_for_another_goal_without_measuring() -> None:
    rows = {MACHETE: {"tok_s_1": 268, "tok_s_64": 8752, "used": MACHETE},
            MARLIN: {"tok_s_1": 310, "tok_s_64": 7943, "used": MARLIN}}  # fmt: skip
    stored = {"winner": MACHETE, "kernel": MACHETE, "candidates": rows}
    latency = from_stored(HOPPER, "H200|vllm 0.26.0", stored, "latency")
    assert latency is not None and latency.kernel == MARLIN
    assert latency.env == {"VLLM_DISABLED_KERNELS": MACHETE}
    assert "for latency" in (latency.reason or "")
    throughput = from_stored(HOPPER, "H200|vllm 0.26.0", stored, "throughput")
    assert throughput is not None and throughput.kernel == MACHETE


def test_a_stored_winner_is_reused_unless_it_is_no_longer_a_candidate() -> None:
    stored = {"winner": MARLIN, "kernel": MARLIN, "env": {}}
    choice = from_stored(HOPPER, "H100|vllm 0.26.0", stored)
    assert choice is not None and choice.env == {"VLLM_DISABLED_KERNELS": MACHETE}
    assert from_stored(HOPPER, "k", {"winner": "ExllamaLinearKernel"}) is None


def test_results_are_added_to_the_report_atomically(tmp_path: Path) -> None:
    store = VariantStore(tmp_path)
    gptq = Variant(method=Method.GPTQ, bits=4)
    with pytest.raises(ValueError, match="not built"):
        store.save_tuning("tiny", gptq, "k", {})
    folder = store.variant_dir("tiny", gptq)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"job_id": "j1"}))
    store.save_tuning("tiny", gptq, "H100|vllm 0.26.0", {"winner": MARLIN})
    store.save_tuning("tiny", gptq, "L4|vllm 0.26.0", {"winner": MACHETE})
    report = store.report("tiny", gptq)
    assert report is not None and report["job_id"] == "j1"
    assert store.tuning("tiny", gptq) == {
        "H100|vllm 0.26.0": {"winner": MARLIN},
        "L4|vllm 0.26.0": {"winner": MACHETE},
    }
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]  # no temp file left
    base = Variant(method=Method.NONE)  # a pre-quantized source: a folder with only the report
    store.save_tuning("tiny", base, "k", {"winner": MARLIN})
    assert store.tuning("tiny", base) == {"k": {"winner": MARLIN}}
    assert not store.is_built("tiny", Variant(method=Method.GPTQ, bits=4, group_size=64))
