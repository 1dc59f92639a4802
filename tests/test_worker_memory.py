"""The quantizer's cache plan: the pipeline's hidden states and AWQ's activations stay on the
GPU when they fit, AWQ's first (it reuses them ~20 times per mapping)."""

from __future__ import annotations

from serving.worker.memory import (
    Offload,
    awq_cache_bytes,
    awq_outputs_bytes,
    pipeline_cache_bytes,
    plan,
)

LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336}
GIB = 2**30
H200_FREE = 124 * GIB  # measured after loading the 16 GB 8B model
H100_FREE = 62 * GIB
ALL = 512 * 2048  # AWQ's grid over every calibration token
BOUNDED = 128 * 512  # the worker's default: the grid over AutoAWQ's calibration size


def test_sizes_of_an_8b_llama_at_the_issues_calibration() -> None:
    tokens = 512 * 2048
    assert round(awq_cache_bytes(tokens, LLAMA_8B) / GIB) == 44  # the worker's log said 44.0
    assert round(awq_outputs_bytes(tokens, LLAMA_8B) / GIB) == 16
    assert round(pipeline_cache_bytes(512, 2048, LLAMA_8B) / GIB) == 20


def test_everything_stays_on_an_h200() -> None:
    assert plan(512, 2048, LLAMA_8B, H200_FREE, ALL) == Offload(pipeline=False, awq=False)
    assert plan(512, 2048, LLAMA_8B, H200_FREE) == Offload(pipeline=False, awq=False)


def test_on_an_h100_awq_keeps_its_cache_and_the_pipeline_goes_to_the_host() -> None:
    assert plan(512, 2048, LLAMA_8B, 100 * GIB, ALL) == Offload(pipeline=True, awq=False)
    assert plan(512, 2048, LLAMA_8B, H100_FREE, ALL) == Offload(pipeline=False, awq=True)
    assert plan(512, 2048, LLAMA_8B, H100_FREE) == Offload(pipeline=False, awq=False)


def test_a_bounded_grid_keeps_awqs_cache_on_an_h100_with_the_pipeline() -> None:
    assert round(awq_cache_bytes(BOUNDED, LLAMA_8B) / GIB, 1) == 2.8  # the H200 job's log: 2.8
    assert plan(512, 2048, LLAMA_8B, H100_FREE, BOUNDED) == Offload(pipeline=False, awq=False)


def test_too_big_for_the_gpu_goes_to_the_host() -> None:
    assert plan(4096, 4096, LLAMA_8B, 20 * GIB, ALL) == Offload(pipeline=True, awq=True)
    assert plan(4096, 4096, LLAMA_8B, 20 * GIB) == Offload(pipeline=True, awq=False)


def test_nothing_moves_without_a_gpu() -> None:
    assert plan(512, 2048, LLAMA_8B, None, ALL) == Offload(pipeline=False, awq=False)
