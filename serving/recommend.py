"""Which quantization method to serve a model with, on given hardware, for a given load.

The decision logic of the quantization handbook, written down: weights must fit beside the KV
cache the load needs; the hardware must have a kernel for the scheme (``serving.kernels``); then
- quality: the most bits that fit, except that FP8 comes first where the GPU has FP8 kernels
  (compute capability >= 8.9: close to bf16 in quality, half its bytes, twice the KV cache), then
  int8 W8A8, then 4-bit GPTQ, which measured closest to base among the 4-bit methods here;
  GPUs without bf16 (compute capability < 8.0) serve the base in float16;
- speed: 4-bit weights (decode is memory-bound: fewer bytes per token) where a fast kernel
  exists (Marlin/Machete, compute capability >= 7.5), else 8-bit, else bf16; at 32 concurrent
  requests or more on FP8 GPUs, FP8 first (batched decode is compute-bound: the 4-bit kernels'
  dequantization gives back their bandwidth gain, FP8 tensor cores do not);
- memory: the fewest bytes that can be served (4-bit; W4A8 on CPUs without AVX-512).
The KV cache: with a context length and a concurrency, every request at full context
(``Workload``); without them, a quarter of the memory. Its size per token comes from the
model's ``config.json`` when given, else from the Llama shapes of that size (an estimate).
Measured rows (``quantgate bench --json``) replace the rules where they cover the candidates:
speed picks the highest measured tokens/s, quality the lowest measured perplexity increase.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from serving.hardware import Hardware
from serving.kernels import choose, planned_scheme
from serving.manifest import Variant

Priority = Literal["quality", "speed", "memory"]
GIB = 1024**3
KV_SHARE = 0.25  # of GPU memory kept for the KV cache, activations and CUDA graphs
OVERHEAD_GIB = 1.5  # per GPU: CUDA context, allocator and vLLM's own buffers
UTILIZATION = 0.9  # vLLM's gpu_memory_utilization: what a workload may fill
FP8_CAPABILITY, BF16_CAPABILITY = 89, 80
QUALITY_TIE = 0.01  # measured perplexity increases this close are as good as each other
BATCHED = 32  # concurrent requests from which decode is compute-bound on a GPU
# KV cache bytes per token (bf16, K and V) of Llama-3-style GQA models, by parameters:
# layers x KV heads x head dim x 2 x 2 (3.2-1B, 3.2-3B, 3.1-8B, 3.1-70B, 3.1-405B).
KV_SHAPES = ((1.2e9, 16 * 8 * 64 * 4), (3.2e9, 28 * 8 * 128 * 4), (8e9, 32 * 8 * 128 * 4),
             (70e9, 80 * 8 * 128 * 4), (405e9, 126 * 8 * 128 * 4))  # fmt: skip

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


@dataclass(frozen=True)
class Workload:
    """What the deployment serves: ``gpus`` of the given memory each (tensor parallel), and
    optionally ``concurrency`` requests of ``context_length`` tokens at once."""

    context_length: int | None = None
    concurrency: int | None = None
    gpus: int = 1
    kv_bytes_per_token: float | None = None  # from config.json; None: estimated

    def kv_per_token(self, params: float) -> float:
        return self.kv_bytes_per_token or estimate_kv_per_token(params)


class MeasuredRow(BaseModel):
    """A row of ``quantgate bench --json``: what the recommendation reads of it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    method: str
    scheme: str
    tokens_per_s_1: float | None = None
    tokens_per_s_n: float | None = None
    ppl_increase: float | None = None


_MEASURED = TypeAdapter(list[MeasuredRow])


def read_measured(text: str) -> list[MeasuredRow]:
    """The rows of ``quantgate bench --json`` output; ValueError saying what is wrong where."""
    try:
        return _MEASURED.validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [f"row {part}" if isinstance(part, int) else str(part) for part in error["loc"]]
        where = ": ".join(loc)
        raise ValueError(
            "not `quantgate bench --json` output (a list of rows with method and scheme): "
            f"{where + ': ' if where else ''}{error['msg']}"
        ) from None


@dataclass
class Recommendation:
    choice: str | None
    variant: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)
    considered: list[dict[str, Any]] = field(default_factory=list)
    serve: dict[str, Any] = field(default_factory=dict)  # manifest `serve:` settings it needs


def estimate_kv_per_token(params: float) -> float:
    """KV cache bytes per token of a Llama-3-style model of ``params`` parameters (log-log
    between the known shapes)."""
    xs = [math.log(p) for p, _ in KV_SHAPES]
    ys = [math.log(b) for _, b in KV_SHAPES]
    x = min(max(math.log(params), xs[0]), xs[-1])
    i = max(j for j in range(len(xs) - 1) if xs[j] <= x) if x > xs[0] else 0
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return math.exp(ys[i] + t * (ys[i + 1] - ys[i]))


def kv_per_token_from_config(config: dict[str, Any]) -> float:
    """KV cache bytes per token (bf16) from a Hugging Face ``config.json``."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return float(config["num_hidden_layers"] * kv_heads * head_dim * 2 * 2)


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
    if value <= 0:
        raise ValueError(f"{text!r} is not above zero")
    return value * scale


def recommend(
    params: float,
    memory_gib: float,
    priority: Priority,
    hardware: Hardware,
    measured: Sequence[MeasuredRow] = (),
    workload: Workload = Workload(),
) -> Recommendation:
    """The method to serve ``params`` parameters in ``memory_gib`` per GPU (or of host RAM)."""
    rec = Recommendation(None, None)
    room = _Room(params, memory_gib, hardware, workload)
    rec.reasons.append(room.describe())
    fitting = []
    for name in _order(priority, hardware, workload, rec.reasons):
        row = _candidate(name, params, hardware, room)
        row.update(_measured(measured, Variant.model_validate(CANDIDATES[name][0])))
        rec.considered.append(row)
        if row["fits"] and not row["unsupported"]:
            fitting.append(row)
    best = (_by_measurement(fitting, priority) or fitting[0]) if fitting else room.fallback(rec)
    if best is None:
        return rec
    _choose(rec, best, priority, fitting, hardware, workload)
    return rec


def _choose(
    rec: Recommendation,
    best: dict[str, Any],
    priority: Priority,
    fitting: list[dict[str, Any]],
    hardware: Hardware,
    workload: Workload,
) -> None:
    choice: str = best["candidate"]
    rec.choice, rec.variant = choice, CANDIDATES[best["method_of"]][0]
    if choice == "fp16":
        rec.serve["dtype"] = "float16"
        rec.reasons.append(
            f"no bf16 on compute capability {hardware.capability / 10:.1f}: the base is served "
            "in float16 (serve.dtype: float16)"
        )
    if workload.gpus > 1:
        rec.serve["tensor_parallel_size"] = workload.gpus
    if fitting:
        rec.reasons.append(_why(best, priority, fitting))
    skipped = [r for r in rec.considered[: rec.considered.index(best)] if r is not best]
    for r in skipped:
        if not r["fits"]:
            rec.reasons.append(f"not {r['candidate']}: its {r['weights_gib']} GiB do not fit")
        elif r["unsupported"]:
            rec.reasons.append(f"not {r['candidate']}: {r['unsupported']}")


def _order(
    priority: Priority, hardware: Hardware, workload: Workload, reasons: list[str]
) -> tuple[str, ...]:
    order = ORDER[priority]
    fp8_gpu = hardware.device == "cuda" and hardware.capability >= FP8_CAPABILITY
    batched = (workload.concurrency or 0) >= BATCHED
    if fp8_gpu and (priority == "quality" or (priority == "speed" and batched)):
        order = ("fp8", *(n for n in order if n != "fp8"))
        reasons.append(
            "FP8 first: this GPU has FP8 kernels; FP8 keeps quality close to bf16 with half its "
            "bytes (twice the room for the KV cache)"
            if priority == "quality"
            else f"FP8 first: at {workload.concurrency} concurrent requests decode is "
            "compute-bound, where 4-bit weights lose their bandwidth gain to dequantization and "
            "FP8 tensor cores do not"
        )
    return order


def _candidate(name: str, params: float, hardware: Hardware, room: _Room) -> dict[str, Any]:
    fields, per_param = CANDIDATES[name]
    variant = Variant.model_validate(fields)
    need = params * per_param / GIB
    kernel = choose(planned_scheme(variant), hardware)
    why = hardware.unsupported(variant) or (None if kernel.supported else kernel.reason)
    fp16 = name == "bf16" and hardware.device == "cuda" and hardware.capability < BF16_CAPABILITY
    row: dict[str, Any] = {
        "candidate": "fp16" if fp16 else name,
        "method_of": name,
        "scheme": "FP16" if fp16 else variant.scheme,
        "weights_gib": round(need, 1),
        "fits": need <= room.weights,
        "kernel": kernel.kernel,
        "unsupported": why,
    }
    if room.per_request:
        row["full_context_requests"] = room.requests(need)
    return row


class _Room:
    """Memory for weights once the KV cache the workload needs is set aside."""

    def __init__(
        self, params: float, memory_gib: float, hardware: Hardware, workload: Workload
    ) -> None:
        gpus = workload.gpus if hardware.device == "cuda" else 1
        self.total, self.workload, self.gpus = memory_gib * gpus, workload, gpus
        self.params = params
        self.kv_token = workload.kv_per_token(params)
        context, concurrency = workload.context_length, workload.concurrency
        self.per_request = self.kv_token * context / GIB if context else 0.0
        self.usable = self.total * UTILIZATION - gpus * OVERHEAD_GIB
        if self.per_request and concurrency:
            self.kv = self.per_request * concurrency
            self.weights = self.usable - self.kv
        else:
            self.kv = self.total * KV_SHARE
            self.weights = self.total * (1 - KV_SHARE) - gpus * OVERHEAD_GIB

    def requests(self, weights_gib: float) -> int:
        """Requests at full context the KV cache holds beside these weights."""
        return max(0, math.floor((self.usable - weights_gib) / self.per_request))

    def describe(self) -> str:
        where = f"{self.gpus} GPUs" if self.gpus > 1 else "memory"
        kv = (
            f"{self.kv:.1f} GiB of KV cache for {self.workload.concurrency} requests of "
            f"{self.workload.context_length} tokens ({self.kv_token / 1024:.0f} KiB per token"
            f"{'' if self.workload.kv_bytes_per_token else ', estimated from the size'})"
            if self.per_request and self.workload.concurrency
            else f"{KV_SHARE:.0%} kept for the KV cache and activations"
        )
        weights = f"{self.weights:.1f} GiB" if self.weights > 0 else "nothing"
        return (
            f"weights may take {weights} of the {self.total:.0f} GiB of {where}: "
            f"{kv}, {OVERHEAD_GIB} GiB per GPU for the runtime"
        )

    def fallback(self, rec: Recommendation) -> dict[str, Any] | None:
        """Nothing leaves room for the whole load: the servable candidate holding the most
        requests at full context (the rest queue in vLLM), or None with what to do."""
        servable = [r for r in rec.considered if not r["unsupported"]]
        holding = [r for r in servable if r.get("full_context_requests", 0) >= 1]
        if not holding:
            rec.reasons.append(
                "nothing fits: even 4-bit weights need "
                f"{self.params * CANDIDATES['gptq-w4a16'][1] / GIB:.1f} GiB beside the KV cache; "
                "use tensor parallelism over more GPUs (serve.tensor_parallel_size) or a "
                "smaller model"
            )
            return None
        most = max(holding, key=lambda r: r["full_context_requests"])
        best = next(
            r for r in holding if 2 * r["full_context_requests"] >= most["full_context_requests"]
        )
        rec.reasons.append(
            f"no candidate holds {self.workload.concurrency} requests of "
            f"{self.workload.context_length} tokens at once: {best['candidate']}, the first in "
            f"this order that holds at least half as many as any, holds "
            f"{best['full_context_requests']} at full context ({most['candidate']}: "
            f"{most['full_context_requests']}); vLLM queues the rest, more GPUs hold more"
        )
        return best


def _measured(rows: Sequence[MeasuredRow], variant: Variant) -> dict[str, Any]:
    """The measured row of the same method and scheme, if ``quantgate bench`` ran one (the
    base weights are the reference: no perplexity increase by definition)."""
    if not rows:
        return {}
    if not variant.quantized:
        found = next((r for r in rows if r.method == "none"), None)
        tokens = found.tokens_per_s_n if found else None
        return {"tokens_per_s_n": tokens, "ppl_increase": 0.0}
    for row in rows:
        if row.method == variant.method.value and row.scheme == variant.scheme:
            return row.model_dump(include={"tokens_per_s_1", "tokens_per_s_n", "ppl_increase"})
    return {}


def _by_measurement(fitting: list[dict[str, Any]], priority: Priority) -> dict[str, Any] | None:
    if priority == "speed":
        rows = [r for r in fitting if r.get("tokens_per_s_n")]
        return max(rows, key=lambda r: r["tokens_per_s_n"]) if len(rows) >= 2 else None
    if priority == "quality":  # within a point of the best measured, the rule's order decides
        rows = [r for r in fitting if r.get("ppl_increase") is not None]
        if len(rows) < 2:
            return None
        least = min(r["ppl_increase"] for r in rows)
        return next(r for r in rows if r["ppl_increase"] <= least + QUALITY_TIE)
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
