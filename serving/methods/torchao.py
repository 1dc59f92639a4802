"""torchao int4 weight-only through transformers (GPU: tinygemm's tile layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.methods.base import RECIPE_FIELDS, Backend, Family, Method, set_fields
from serving.worker.protocol import HF_QUANTIZER_PACKAGES

if TYPE_CHECKING:
    from serving.manifest.variants import Variant

TORCHAO_GROUPS = (32, 64, 128, 256)  # what torchao's int4 tile-packed kernel takes
TORCHAO_ON_CPU = (
    "torchao 0.18's int4 weight-only packs for CUDA kernels only (tinygemm's tile layout, or "
    "mslk's; its CPU layout is gone), so it is built and served on a GPU (compute capability "
    ">= 8.0); here serve a W4A8 / W8A8 variant"
)


class Torchao(Family):
    methods = (Method.TORCHAO,)
    bits = {Method.TORCHAO: (4,)}
    builds = {Backend.TRANSFORMERS: (Method.TORCHAO,)}
    default_backend = Backend.TRANSFORMERS
    vllm_packages = {Method.TORCHAO: HF_QUANTIZER_PACKAGES["torchao"]}

    def recipe(self, v: Variant) -> dict[str, Any]:
        return {"method": "torchao", "backend": Backend.TRANSFORMERS.value, "bits": 4,
                "group_size": v.group_size or 128}  # fmt: skip

    def problems(self, v: Variant) -> list[str]:
        """Asymmetric groups chosen by torchao, no calibration; only the group size is
        chosen."""
        fixed = tuple(f for f in RECIPE_FIELDS if f not in ("backend", "group_size"))
        given = set_fields(v, fixed)
        given += ["backend"] if v.backend not in (None, Backend.TRANSFORMERS) else []
        problems = [f"torchao int4 weight-only takes only group_size: drop {', '.join(given)}"]
        problems = problems if given else []
        if v.bits not in (None, 4):
            problems.append(f"method 'torchao' is int4 weight-only: bits 4, not {v.bits}")
        if v.group_size is not None and v.group_size not in TORCHAO_GROUPS:
            allowed = ", ".join(map(str, TORCHAO_GROUPS))
            problems.append(f"torchao's int4 kernel takes group_size {allowed}, not {v.group_size}")
        return problems

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        return TORCHAO_ON_CPU

    def group_shape(self, recipe: dict[str, Any]) -> tuple[int, list[str]] | None:
        return recipe["group_size"], ["lm_head"]  # torchao leaves lm_head in bf16

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        return "torchao", 4, "16"
