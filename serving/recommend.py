"""Which quantization method to serve a model with, on given hardware, for a given priority.

The decision logic of the quantization handbook, written down: weights must fit with room for
the KV cache; the hardware must have a kernel for the scheme (``serving.kernels``); then
- quality: the most bits that fit (bf16, then 8-bit: FP8 where the GPU has it, else int8 W8A8,
  then 4-bit GPTQ, which measured closest to base among the 4-bit methods here);
- speed: 4-bit weights (decode is memory-bound: fewer bytes per token) where a fast kernel
  exists (Marlin/Machete, compute capability >= 7.5), else 8-bit, else bf16;
- memory: the fewest bytes that can be served (4-bit; W4A8 on CPUs without AVX-512).
Measured rows (``quantgate bench --json``) replace the rules where they cover the candidates:
speed picks the highest measured tokens/s, quality the lowest measured perplexity increase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.hardware import Hardware
from serving.kernels import choose, planned_scheme
from serving.manifest import Variant

Priority = Literal["quality", "speed", "memory"]
GIB = 1024**3
KV_SHARE = 0.25  # of GPU memory kept for the KV cache, activations and CUDA graphs
OVERHEAD_GIB = 1.5  # CUDA context, allocator and vLLM's own buffers

# Bytes per parameter of the weights as served (4-bit: packed int4 + one bf16 scale per 128).
CANDIDATES: dict[str, tuple[dict[str, Any], float]] = {
    "bf16": ({"method": "none"}, 2.0),
    "fp8": ({"method": "fp8"}, 1.0),
    "w8a8": ({"method": "w8a8"}, 1.0),
    "gptq-w8a16": ({"method": "gptq", "bits": 8}, 1.0 + 2 / 128),
    "gptq-w4a16": ({"method": "gptq", "bits": 4}, 0.5 + 2 / 128),
    "awq-w4a16": ({"method": "awq", "bits": 4}, 0.5 + 4 / 128),
    "gptq-w4a8": ({"method": "gptq", "bits": 4, "activation_bits": 8}, 0.5 + 2 / 128),
    # Kernels that dequantize in the matmul rather than Marlin's: kept behind the 4-bit Marlin
    # methods for speed and memory, and offered where those have no kernel.
    "bnb-nf4": ({"method": "bitsandbytes"}, 0.5 + 0.5 / 64 + 4 / (64 * 256)),  # double quant
    "gguf-q4_k_m": ({"method": "gguf", "gguf_type": "q4_k_m"}, 4.85 / 8),  # llama.cpp's bpw
    "gguf-q8_0": ({"method": "gguf", "gguf_type": "q8_0"}, 8.5 / 8),
}
ORDER: dict[Priority, tuple[str, ...]] = {
    "quality": (
        "bf16",
        "fp8",
        "w8a8",
        "gptq-w8a16",
        "gguf-q8_0",
        "gptq-w4a16",
        "awq-w4a16",
        "gguf-q4_k_m",
        "bnb-nf4",
        "gptq-w4a8",
    ),
    "speed": (
        "gptq-w4a16",
        "awq-w4a16",
        "fp8",
        "w8a8",
        "gptq-w4a8",
        "gptq-w8a16",
        "gguf-q4_k_m",
        "bnb-nf4",
        "gguf-q8_0",
        "bf16",
    ),
    "memory": (
        "gptq-w4a16",
        "awq-w4a16",
        "gptq-w4a8",
        "bnb-nf4",
        "gguf-q4_k_m",
        "w8a8",
        "fp8",
        "gptq-w8a16",
        "gguf-q8_0",
        "bf16",
    ),
}


@dataclass
class Recommendation:
    choice: str | None
    variant: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)
    considered: list[dict[str, Any]] = field(default_factory=list)


def parse_size(text: str, unit: str) -> float:
    """``8B`` / ``70b`` / ``1.5B`` parameters, or ``24GiB`` / ``80GB`` / ``24`` of memory (GiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size")
    value, suffix = float(m.group(1)), m.group(2).lower()
    if unit == "params":
        scale = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}.get(suffix)
    else:
        scale = {"": 1.0, "gib": 1.0, "gb": 1e9 / GIB, "mib": 1 / 1024, "tib": 1024.0}.get(suffix)
    if scale is None:
        raise ValueError(f"unknown unit {m.group(2)!r} in {text!r}")
    return value * scale


def recommend(
    params: float,
    memory_gib: float,
    priority: Priority,
    hardware: Hardware,
    measured: list[dict[str, Any]] | None = None,
) -> Recommendation:
    """The method to serve ``params`` parameters in ``memory_gib`` per GPU (or of host RAM)."""
    budget = memory_gib * (1 - KV_SHARE) - OVERHEAD_GIB
    rec = Recommendation(None, None)
    where = "GPU" if hardware.device == "cuda" else "host"
    rec.reasons.append(
        f"{params / 1e9:.1f}B parameters; weights may take {budget:.1f} GiB of the "
        f"{memory_gib:.0f} GiB of {where} memory ({KV_SHARE:.0%} kept for the KV cache and "
        f"activations, {OVERHEAD_GIB} GiB for the runtime)"
    )
    fitting = []
    for name in ORDER[priority]:
        fields, per_param = CANDIDATES[name]
        variant = Variant.model_validate(fields)
        need = params * per_param / GIB
        kernel = choose(planned_scheme(variant), hardware)
        why = hardware.unsupported(variant) or (None if kernel.supported else kernel.reason)
        row: dict[str, Any] = {"candidate": name, "scheme": variant.scheme,
               "weights_gib": round(need, 1),
               "fits": need <= budget, "kernel": kernel.kernel, "unsupported": why}  # fmt: skip
        row.update(_measured(measured or [], variant))
        rec.considered.append(row)
        if row["fits"] and not why:
            fitting.append(row)
    if not fitting:
        rec.reasons.append(
            "nothing fits: even 4-bit weights need "
            f"{params * CANDIDATES['gptq-w4a16'][1] / GIB:.1f} GiB; use tensor parallelism over "
            "more GPUs (serve.tensor_parallel_size) or a smaller model"
        )
        return rec
    best = _by_measurement(fitting, priority) or fitting[0]
    choice: str = best["candidate"]
    rec.choice, rec.variant = choice, CANDIDATES[choice][0]
    rec.reasons.append(_why(best, priority, fitting))
    skipped = [r for r in rec.considered[: rec.considered.index(best)] if r is not best]
    for r in skipped:
        if not r["fits"]:
            rec.reasons.append(f"not {r['candidate']}: its {r['weights_gib']} GiB do not fit")
        elif r["unsupported"]:
            rec.reasons.append(f"not {r['candidate']}: {r['unsupported']}")
    return rec


def _measured(rows: list[dict[str, Any]], variant: Variant) -> dict[str, Any]:
    """The measured row of the same method and scheme, if ``quantgate bench`` ran one (the
    base weights are the reference: no perplexity increase by definition)."""
    if not variant.quantized:
        found = next((r for r in rows if r.get("method") == "none"), {})
        return {"tokens_per_s_n": found.get("tokens_per_s_n"), "ppl_increase": 0.0}
    for row in rows:
        if row.get("method") == variant.method.value and row.get("scheme") == variant.scheme:
            return {k: row.get(k) for k in ("tokens_per_s_1", "tokens_per_s_n", "ppl_increase")}
    return {}


def _by_measurement(fitting: list[dict[str, Any]], priority: Priority) -> dict[str, Any] | None:
    if priority == "speed":
        rows = [r for r in fitting if r.get("tokens_per_s_n")]
        return max(rows, key=lambda r: r["tokens_per_s_n"]) if len(rows) >= 2 else None
    if priority == "quality":
        rows = [r for r in fitting if r.get("ppl_increase") is not None]
        return min(rows, key=lambda r: r["ppl_increase"]) if len(rows) >= 2 else None
    return None


def _why(best: dict[str, Any], priority: Priority, fitting: list[dict[str, Any]]) -> str:
    measured = ""
    if best.get("tokens_per_s_n"):
        measured = f"; measured {best['tokens_per_s_n']:.0f} tok/s"
    if best.get("ppl_increase") is not None:
        measured += f", perplexity {best['ppl_increase']:+.2%} vs base"
    rule = {
        "quality": "the most bits that fit and can be served",
        "speed": "the fewest bytes per token that a fast kernel serves",
        "memory": "the smallest weights that can be served",
    }[priority]
    return (
        f"{best['candidate']} ({best['scheme']}, kernel {best['kernel']}): {rule}; its weights "
        f"take {best['weights_gib']} GiB{measured}"
    )
