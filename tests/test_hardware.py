from __future__ import annotations

from pathlib import Path

from serving.hardware import Gpu, Hardware, parse_nvidia_smi


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
