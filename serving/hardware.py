"""What accelerator and CPU this machine has, read once at start-up."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: int  # compute capability x 10: 75, 80, 89, 90
    memory_mib: int


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str] = frozenset()
    gpus: tuple[Gpu, ...] = ()

    @property
    def capability(self) -> int:
        """The lowest compute capability among the GPUs (0 without GPUs)."""
        return min((g.capability for g in self.gpus), default=0)

    @classmethod
    def detect(cls, cpuinfo: Path = Path("/proc/cpuinfo")) -> Hardware:
        gpus = _nvidia_gpus()
        return cls("cuda" if gpus else "cpu", _cpu_flags(cpuinfo), gpus)


def _cpu_flags(cpuinfo: Path) -> frozenset[str]:
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _nvidia_gpus() -> tuple[Gpu, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    query = "--query-gpu=index,name,compute_cap,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(parse_nvidia_smi(out))


def parse_nvidia_smi(out: str) -> list[Gpu]:
    gpus = []
    for line in out.strip().splitlines():
        index, name, cap, mem = (part.strip() for part in line.split(","))
        major, _, minor = cap.partition(".")
        gpus.append(Gpu(int(index), name, int(major) * 10 + int(minor or 0), int(mem)))
    return gpus
