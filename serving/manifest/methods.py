"""The quantization methods a variant may name, and what each accepts."""

from __future__ import annotations

from enum import StrEnum


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


GGUF_BITS = {
    GgufType.Q8_0: 8, GgufType.Q6_K: 6, GgufType.Q5_K_M: 5, GgufType.Q4_K_M: 4, GgufType.Q4_0: 4
}  # fmt: skip
GGUF_BY_BITS = {8: GgufType.Q8_0, 6: GgufType.Q6_K, 5: GgufType.Q5_K_M, 4: GgufType.Q4_K_M}


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


class Backend(StrEnum):
    """The library that builds a variant (the quantizer environment must have it)."""

    LLMCOMPRESSOR = "llmcompressor"
    LLAMACPP = "llamacpp"  # llama.cpp's convert_hf_to_gguf.py and quantizer (llama-cpp-python)
    TRANSFORMERS = "transformers"  # its bitsandbytes (LLM.int8) and torchao (int4) integrations
    AUTOAWQ = "autoawq"  # legacy: deprecated upstream, last tested with torch 2.6
    AUTOGPTQ = "autogptq"  # legacy: archived upstream


# What each method accepts. Weight bits 2 and 3 exist for quality studies: vLLM has no
# kernels for them, so such variants are built and measured but not served.
METHOD_BITS: dict[Method, tuple[int, ...]] = {
    Method.GPTQ: (2, 3, 4, 8),
    Method.AWQ: (2, 3, 4),
    Method.RTN: (2, 3, 4, 8),
    Method.W8A8: (8,),
    Method.FP8: (8,),
    Method.AUTOROUND: (2, 3, 4, 8),
    Method.BITSANDBYTES: (4, 8),  # 4: NF4 at load; 8: LLM.int8, built (vLLM loads it prebuilt)
    Method.GGUF: tuple(sorted(GGUF_BY_BITS)),
    Method.TORCHAO: (4,),
}
TORCHAO_GROUPS = (32, 64, 128, 256)  # what torchao's int4 tile-packed kernel takes
LOAD_TIME = {Method.FP8: "fp8", Method.BITSANDBYTES: "bitsandbytes"}  # vLLM's --quantization
MEASURED_AT_LOAD = (Method.BITSANDBYTES,)  # a job measures their quality (Variant.needs_job)
BACKEND_METHODS: dict[Backend, tuple[Method, ...]] = {
    Backend.LLMCOMPRESSOR: (Method.GPTQ, Method.AWQ, Method.W8A8, Method.RTN, Method.AUTOROUND),
    Backend.AUTOAWQ: (Method.AWQ,),
    Backend.AUTOGPTQ: (Method.GPTQ,),
    Backend.LLAMACPP: (Method.GGUF,),
    Backend.TRANSFORMERS: (Method.BITSANDBYTES, Method.TORCHAO),
}
DEFAULT_BACKEND = {
    Method.GGUF: Backend.LLAMACPP,
    Method.BITSANDBYTES: Backend.TRANSFORMERS,
    Method.TORCHAO: Backend.TRANSFORMERS,
}
CALIBRATED = (Method.GPTQ, Method.AWQ, Method.W8A8, Method.AUTOROUND)
# What a recipe may set beyond method and bits; methods that fix some of them refuse those.
RECIPE_FIELDS = (
    "backend", "activation_bits", "group_size", "symmetric", "calibration", "gguf_type", "ignore"
)  # fmt: skip


BUILTIN_CALIBRATION = "docs+chat+code/1"  # serving.worker.calibration.builtin_streams
