from __future__ import annotations

from pathlib import Path

from serving.hardware import Hardware
from serving.manifest import Method, Variant


def test_detect_reads_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert {"avx2", "avx512f"} <= Hardware.detect(cpuinfo).cpu_flags
    assert Hardware.detect(tmp_path / "absent").cpu_flags == frozenset()


def test_w4a16_needs_avx512_on_cpu_and_w4a8_does_not() -> None:
    avx2 = Hardware("cpu", frozenset({"avx2"}))
    avx512 = Hardware("cpu", frozenset({"avx2", "avx512f"}))
    w4a16 = Variant(method=Method.GPTQ, bits=4)
    awq = Variant(method=Method.AWQ, bits=4)
    w4a8 = Variant(method=Method.GPTQ, bits=4, activation_bits=8)
    base = Variant(method=Method.NONE)
    assert "cpu_gemm_wna16" in (avx2.unsupported(w4a16) or "")
    assert avx2.unsupported(awq)
    assert avx2.unsupported(w4a8) is None and avx2.unsupported(base) is None
    assert avx512.unsupported(w4a16) is None and avx512.unsupported(awq) is None
    assert Hardware("cuda", frozenset()).unsupported(w4a16) is None
