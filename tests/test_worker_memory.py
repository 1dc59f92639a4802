"""AWQ's activation cache: kept on the GPU when it fits easily, in host memory when not."""

from __future__ import annotations

from serving.worker.memory import awq_cache_bytes, awq_offload

LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336}
GIB = 2**30


def test_cache_size_of_an_8b_llama_at_the_issues_calibration() -> None:
    assert round(awq_cache_bytes(512 * 2048, LLAMA_8B) / GIB) == 44  # 47 GB: what ran out


def test_full_calibration_on_an_8b_goes_to_host_memory() -> None:
    free_after_loading = 120 * GIB  # an H200 holding the 16 GB model
    assert awq_offload(512 * 2048, LLAMA_8B, free_after_loading)


def test_small_calibration_stays_on_the_gpu() -> None:
    assert not awq_offload(64 * 512, LLAMA_8B, 60 * GIB)  # 1.4 GiB: measured fine at 101 s


def test_nothing_to_offload_without_a_gpu() -> None:
    assert not awq_offload(512 * 2048, LLAMA_8B, None)
