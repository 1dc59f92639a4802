"""The kernel decision table: every scheme on compute capability 7.5, 8.0, 8.9, 9.0 and CPU."""

from __future__ import annotations

from typing import Any

import pytest

from serving.hardware import Gpu, Hardware
from serving.kernels import Scheme, choose, planned_scheme, read_scheme
from serving.manifest import Method, Variant


def gpu(cap: int) -> Hardware:
    return Hardware("cuda", gpus=(Gpu(0, "gpu", cap, 80_000),))


AVX2 = Hardware("cpu", frozenset({"avx2"}))
AVX512 = Hardware("cpu", frozenset({"avx2", "avx512f"}))


def ct(weight_bits: int, act: dict[str, Any] | None = None, wtype: str = "int") -> dict[str, Any]:
    group = {"weights": {"num_bits": weight_bits, "type": wtype}, "input_activations": act}
    return {"quantization_config": {"quant_method": "compressed-tensors",
                                    "config_groups": {"group_0": group}}}  # fmt: skip


GPTQ = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
AWQ = {"quantization_config": {"quant_method": "awq", "bits": 4}}
CT_W4A16 = ct(4)
CT_W8A16 = ct(8)
CT_W4A8 = ct(4, {"num_bits": 8, "type": "int", "dynamic": True})
CT_W8A8 = ct(8, {"num_bits": 8, "type": "int"})
CT_FP8 = ct(8, {"num_bits": 8, "type": "float"}, wtype="float")
FP8_CKPT = {"quantization_config": {"quant_method": "fp8"}}

TABLE = [
    # checkpoint, hardware, expected --quantization, expected kernel (None: unsupported)
    (GPTQ, gpu(90), "gptq", "MacheteLinearKernel"),
    (GPTQ, gpu(89), "gptq", "MarlinLinearKernel"),
    (GPTQ, gpu(80), "gptq", "MarlinLinearKernel"),
    (GPTQ, gpu(75), "gptq", "MarlinLinearKernel"),
    (GPTQ, gpu(70), "gptq", "ExllamaLinearKernel"),
    (AWQ, gpu(90), "awq", "MacheteLinearKernel"),
    (AWQ, gpu(80), "awq", "MarlinLinearKernel"),
    (AWQ, gpu(75), "awq", "MarlinLinearKernel"),
    (AWQ, gpu(70), "awq", None),
    (CT_W4A16, gpu(90), "compressed-tensors", "MacheteLinearKernel"),
    (CT_W4A16, gpu(89), "compressed-tensors", "MarlinLinearKernel"),
    (CT_W4A16, gpu(80), "compressed-tensors", "MarlinLinearKernel"),
    (CT_W4A16, gpu(75), "compressed-tensors", "MarlinLinearKernel"),
    (CT_W8A16, gpu(90), "compressed-tensors", "MarlinLinearKernel"),
    (CT_W8A8, gpu(90), "compressed-tensors", "CutlassInt8ScaledMMLinearKernel"),
    (CT_W8A8, gpu(89), "compressed-tensors", "CutlassInt8ScaledMMLinearKernel"),
    (CT_W8A8, gpu(80), "compressed-tensors", "CutlassInt8ScaledMMLinearKernel"),
    (CT_W8A8, gpu(75), "compressed-tensors", "CutlassInt8ScaledMMLinearKernel"),
    (CT_W4A8, gpu(90), "compressed-tensors", None),
    (CT_FP8, gpu(90), "compressed-tensors", "CutlassFP8ScaledMMLinearKernel"),
    (CT_FP8, gpu(89), "compressed-tensors", "CutlassFP8ScaledMMLinearKernel"),
    (CT_FP8, gpu(80), "compressed-tensors", "MarlinFP8ScaledMMLinearKernel"),
    (CT_FP8, gpu(75), "compressed-tensors", "MarlinFP8ScaledMMLinearKernel"),
    (FP8_CKPT, gpu(89), "fp8", "CutlassFP8ScaledMMLinearKernel"),
    (FP8_CKPT, gpu(70), "fp8", None),
    (GPTQ, AVX512, "gptq", "CPUWNA16LinearKernel"),
    (GPTQ, AVX2, "gptq", None),
    (AWQ, AVX512, "awq", "CPUWNA16LinearKernel"),
    (CT_W4A16, AVX512, "compressed-tensors", "CPUWNA16LinearKernel"),
    (CT_W4A16, AVX2, "compressed-tensors", None),
    (CT_W8A16, AVX512, "compressed-tensors", None),
    (CT_W4A8, AVX2, "compressed-tensors", "Dynamic4bitLinearKernel"),
    (CT_W4A8, AVX512, "compressed-tensors", "Dynamic4bitLinearKernel"),
    (CT_W8A8, AVX2, "compressed-tensors", "CPUInt8ScaledMMLinearKernel"),
    (CT_FP8, AVX2, "compressed-tensors", "CPUFP8W8A8ScaledMMLinearKernel"),
    ({}, gpu(90), None, "dense"),
    ({}, AVX2, None, "dense"),
]


@pytest.mark.parametrize(("config", "hw", "quantization", "kernel"), TABLE)
def test_decision_table(
    config: dict[str, Any], hw: Hardware, quantization: str | None, kernel: str | None
) -> None:
    choice = choose(read_scheme(config), hw)
    assert (choice.quantization, choice.kernel) == (quantization, kernel)
    assert choice.reason  # every decision says why
    assert choice.supported is (kernel is not None)


def test_hopper_w4a16_names_marlin_as_the_alternative() -> None:
    choice = choose(read_scheme(GPTQ), gpu(90))
    assert choice.alternatives == ("MarlinLinearKernel",)


def test_no_avx512_says_why_and_what_to_use() -> None:
    reason = choose(read_scheme(CT_W4A16), AVX2).reason
    assert "cpu_gemm_wna16" in reason and "activation_bits: 8" in reason


def test_no_cpu_kernel_for_8_bit_weight_only_says_what_serves() -> None:
    for cpu, also in ((AVX512, "4-bit weight-only (bits: 4) here"), (AVX2, "W4A8 (bits: 4")):
        choice = choose(read_scheme(CT_W8A16), cpu)
        assert choice.kernel is None and "cpu_gemm_wna16, takes 4-bit weights" in choice.reason
        assert "W8A8 (activation_bits: 8)" in choice.reason and also in choice.reason
        assert "this one on an AVX-512 CPU" not in choice.reason


def test_dynamic_fp8_and_planned_schemes() -> None:
    assert read_scheme({}, at_load="fp8") == Scheme("fp8", 8, "fp8")
    assert planned_scheme(Variant(method=Method.GPTQ, bits=4)).name == "W4A16"
    assert planned_scheme(Variant(method=Method.GPTQ, bits=4, activation_bits=8)).name == "W4A8"
    assert planned_scheme(Variant(method=Method.NONE)).name == "BF16"
