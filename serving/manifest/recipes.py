"""A variant's recipe: its hash, and every way its fields can contradict its method."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from serving.manifest.methods import (
    BACKEND_METHODS,
    CALIBRATED,
    DEFAULT_BACKEND,
    GGUF_BITS,
    GGUF_BY_BITS,
    LOAD_TIME,
    METHOD_BITS,
    RECIPE_FIELDS,
    TORCHAO_GROUPS,
    Backend,
    Method,
)

if TYPE_CHECKING:
    from serving.manifest.variants import Variant


def writes_weights(recipe: dict[str, Any]) -> bool:
    """Whether a job with this recipe writes a checkpoint: every built recipe names its backend;
    a measure-only one (bitsandbytes NF4, quantized by vLLM at load) does not."""
    return "backend" in recipe


def recipe_hash(recipe: dict[str, Any]) -> str:
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _set_fields(v: Variant, names: tuple[str, ...]) -> list[str]:
    """Which of the recipe fields ``names`` the variant sets (``ignore``: other than default)."""
    given = [f for f in names if f != "ignore" and getattr(v, f) is not None]
    return [*given, "ignore"] if "ignore" in names and v.ignore != ("lm_head",) else given


def recipe_problems(v: Variant) -> list[str]:
    """Every way the variant's fields contradict its method (empty: a valid recipe)."""
    if v.upstream is not None and v.method is not Method.NONE:
        return ["a variant with an upstream is served as is: use method 'none'"]
    problems = _method_problems(v)
    if v.max_ppl_increase is not None and not 0 < v.max_ppl_increase <= 10:
        problems.append("max_ppl_increase must be a fraction above 0 (0.05 or '5%')")
    return problems


def _method_problems(v: Variant) -> list[str]:
    m = v.method.value
    if v.method is Method.BITSANDBYTES and v.bits not in (None, 4, 8):
        return [f"method 'bitsandbytes' supports bits 4 (NF4, at load) and 8 (LLM.int8, built), "
                f"not {v.bits}"]  # fmt: skip
    if not v.needs_build:  # a quality budget needs a measure: NF4 has one, FP8 and base not
        gate = () if v.measured_at_load else ("max_ppl_increase",)
        given = _set_fields(v, (*RECIPE_FIELDS, *gate))
        given += ["bits"] if v.bits not in (None, *METHOD_BITS.get(v.method, ())) else []
        why = "is quantized by vLLM at load" if v.method in LOAD_TIME else "is the base weights"
        return [f"method {m!r} {why}: it takes no {', '.join(given)}"] if given else []
    if v.method is Method.GGUF:
        return _gguf_problems(v)
    if v.method is Method.TORCHAO:
        return _torchao_problems(v)
    if v.method is Method.BITSANDBYTES:  # 8 bits: LLM.int8, per-row absmax, outliers in 16 bits
        given = _set_fields(v, tuple(f for f in RECIPE_FIELDS if f != "backend"))
        given += ["backend"] if v.backend not in (None, Backend.TRANSFORMERS) else []
        why = "bitsandbytes int8 is LLM.int8 as bitsandbytes does it"
        return [f"{why}: drop {', '.join(given)}"] if given else []
    if v.gguf_type is not None:
        return [f"gguf_type is for method 'gguf', not {m!r}"]
    problems = []
    if v.bits is not None and v.bits not in METHOD_BITS[v.method]:
        allowed = ", ".join(map(str, METHOD_BITS[v.method]))
        problems.append(f"method {m!r} supports bits {allowed}, not {v.bits}")
    backend = v.backend or DEFAULT_BACKEND.get(v.method, Backend.LLMCOMPRESSOR)
    if v.method not in BACKEND_METHODS[backend]:
        known = ", ".join(b.value for b, ms in BACKEND_METHODS.items() if v.method in ms)
        problems.append(f"backend {backend.value!r} has no method {m!r} (use {known})")
    if v.group_size is not None and v.group_size != -1 and v.group_size < 16:
        problems.append("group_size must be -1 (per channel) or at least 16")
    problems += _activation_problems(v)
    if v.calibration is not None and v.method not in CALIBRATED:
        problems.append(f"method {m!r} is data-free: it takes no calibration")
    return problems


def _gguf_problems(v: Variant) -> list[str]:
    """A GGUF type fixes its own blocks, scales and activations: only the type (or bits) is
    chosen; the output layer is quantized as llama.cpp's type mix says."""
    given = _set_fields(v, tuple(f for f in RECIPE_FIELDS if f not in ("backend", "gguf_type")))
    problems = []
    if given:
        problems.append(
            f"method 'gguf' takes its blocks and scales from the GGUF type: drop {', '.join(given)}"
        )
    if v.backend is not None and v.backend is not Backend.LLAMACPP:
        problems.append(f"method 'gguf' is built by backend 'llamacpp', not {v.backend.value!r}")
    if v.bits is not None and v.gguf_type is not None and GGUF_BITS[v.gguf_type] != v.bits:
        problems.append(f"gguf_type {v.gguf_type.value!r} has {GGUF_BITS[v.gguf_type]}-bit "
                        f"weights, not {v.bits}")  # fmt: skip
    elif v.bits is not None and v.bits not in GGUF_BY_BITS:
        allowed = ", ".join(map(str, sorted(GGUF_BY_BITS)))
        problems.append(f"method 'gguf' supports bits {allowed} (or a gguf_type), not {v.bits}")
    return problems


def _torchao_problems(v: Variant) -> list[str]:
    """torchao int4 weight-only: asymmetric groups chosen by torchao, no calibration; only the
    group size is chosen."""
    given = _set_fields(v, tuple(f for f in RECIPE_FIELDS if f not in ("backend", "group_size")))
    given += ["backend"] if v.backend not in (None, Backend.TRANSFORMERS) else []
    problems = [f"torchao int4 weight-only takes only group_size: drop {', '.join(given)}"]
    problems = problems if given else []
    if v.bits not in (None, 4):
        problems.append(f"method 'torchao' is int4 weight-only: bits 4, not {v.bits}")
    if v.group_size is not None and v.group_size not in TORCHAO_GROUPS:
        allowed = ", ".join(map(str, TORCHAO_GROUPS))
        problems.append(f"torchao's int4 kernel takes group_size {allowed}, not {v.group_size}")
    return problems


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
