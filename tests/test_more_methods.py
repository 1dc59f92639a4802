"""Methods beyond the first four: AutoRound (built), bitsandbytes (quantized by vLLM at load),
the methods that are not offered (and why), and ``quantgate recommend``.

AutoRound's real CPU build is in tests/test_quantization.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import manifest_errors
from serving.hardware import Gpu, Hardware
from serving.kernels import choose, planned_scheme, read_scheme
from serving.launcher import LaunchSpec
from serving.manifest import Method, Variant
from serving.recommend import (
    MeasuredRow,
    Workload,
    estimate_kv_per_token,
    kv_per_token_from_config,
    parse_size,
    recommend,
)

H100 = Hardware("cuda", gpus=(Gpu(0, "H100", 90, 81_559),))
L4 = Hardware("cuda", gpus=(Gpu(0, "L4", 89, 23_034),))
AVX2 = Hardware("cpu", frozenset({"avx2"}))
A100 = Hardware("cuda", gpus=(Gpu(0, "A100", 80, 81_920),))
T4 = Hardware("cuda", gpus=(Gpu(0, "T4", 75, 15_360),))


def manifest(variant: str) -> str:
    return (
        "version: 1\ncache_dir: /tmp/c\nmodels:\n  tiny:\n    source: /m\n"
        f"    default_variant: v\n    variants:\n      v: {variant}\n"
    )


@pytest.mark.parametrize(
    ("method", "why"),
    [
        ("aqlm", "no AQLM kernel"),
        ("vptq", "no VPTQ kernel"),
        ("spqr", "no maintained quantization library"),
        ("higgs", "Transformers (FLUTE kernels) only"),
        ("quip", "no vLLM kernel"),
        ("hqq", "no HQQ kernel"),
        ("AutoAWQ", "a backend, not a method"),
    ],
)
def test_a_method_that_is_not_offered_says_why(method: str, why: str) -> None:
    [error] = manifest_errors(manifest(f"{{method: {method}}}"))
    assert error.startswith("/m/bad.yaml:8: models.tiny.variants.v.method: ")
    assert f"method {method!r} is not offered: " in error and why in error


def test_an_unknown_method_lists_the_offered_ones() -> None:
    [error] = manifest_errors(manifest("{method: nf5}"))
    assert "'autoround'" in error and "'bitsandbytes'" in error


def test_bitsandbytes_is_quantized_by_vllm_at_load() -> None:
    v = Variant(method=Method.BITSANDBYTES)
    assert not v.needs_build and v.serve_quantization == "bitsandbytes"
    assert v.needs_job and v.measured_at_load  # its quality is measured before it is served
    assert v.scheme == "NF4" and v.recipe() == {"method": "bitsandbytes"}
    h100 = choose(planned_scheme(v), H100)
    assert (h100.quantization, h100.kernel) == ("bitsandbytes", "BitsAndBytesLinearMethod")
    assert "no bitsandbytes support" in (AVX2.unsupported(v) or "")
    assert not choose(planned_scheme(v), AVX2).supported


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"method": "bitsandbytes", "bits": 3}, "supports bits 4 .NF4, at load. and 8 .LLM.int8"),
        ({"method": "bitsandbytes", "bits": 8, "group_size": 64}, "LLM.int8 .*: drop group_size"),
        ({"method": "bitsandbytes", "bits": 8, "backend": "llamacpp"}, "drop backend"),
        ({"method": "bitsandbytes", "group_size": 64}, "takes no group_size"),
        ({"method": "bitsandbytes", "calibration": {"samples": 8}}, "takes no calibration"),
        ({"method": "autoround", "bits": 5}, "supports bits 2, 3, 4, 8, not 5"),
        ({"method": "autoround", "activation_bits": 8}, "activation_bits 8 is W4A8"),
        ({"method": "autoround", "backend": "autogptq"}, "has no method 'autoround'"),
        ({"method": "gguf", "group_size": 64}, "from the GGUF type: drop group_size"),
        ({"method": "gguf", "symmetric": False}, "drop symmetric"),
        ({"method": "gguf", "calibration": {"samples": 8}}, "drop calibration"),
        ({"method": "gguf", "bits": 3}, "supports bits 4, 5, 6, 8 .or a gguf_type., not 3"),
        ({"method": "gguf", "bits": 8, "gguf_type": "q4_k_m"}, "4-bit weights, not 8"),
        ({"method": "gguf", "backend": "llmcompressor"}, "built by backend 'llamacpp'"),
        ({"method": "gguf", "gguf_type": "q3_k_s"}, "gguf_type"),
        ({"method": "gptq", "gguf_type": "q8_0"}, "gguf_type is for method 'gguf'"),
        ({"method": "torchao", "group_size": 48}, "takes group_size 32, 64, 128, 256, not 48"),
        ({"method": "torchao", "bits": 8}, "int4 weight-only: bits 4, not 8"),
        ({"method": "torchao", "symmetric": True}, "takes only group_size: drop symmetric"),
        ({"method": "torchao", "calibration": {"samples": 8}}, "drop calibration"),
        ({"method": "torchao", "max_ppl_increase": "-5%"}, "max_ppl_increase must be a fraction"),
        ({"method": "gguf", "max_ppl_increase": 0}, "max_ppl_increase must be a fraction"),
        ({"method": "fp8", "max_ppl_increase": "-5%"}, "max_ppl_increase must be a fraction"),
        ({"method": "bitsandbytes", "gguf_type": "q8_0"}, "takes no gguf_type"),
    ],
)
def test_unsupported_combinations_are_refused_before_any_work(
    fields: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        Variant.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "gguf_type", "bits"),
    [
        ({}, "q4_k_m", 4),
        ({"bits": 8}, "q8_0", 8),
        ({"gguf_type": "Q6_K"}, "q6_k", 6),
        ({"gguf_type": "q4_0", "bits": 4}, "q4_0", 4),
    ],
)
def test_gguf_is_built_by_llama_cpp_in_the_type_asked(
    fields: dict[str, object], gguf_type: str, bits: int
) -> None:
    v = Variant.model_validate({"method": "gguf", **fields})
    assert v.needs_build and v.serve_quantization is None
    assert v.recipe() == {
        "method": "gguf", "backend": "llamacpp", "gguf_type": gguf_type, "bits": bits
    }  # fmt: skip
    assert v.scheme == gguf_type.upper() and v.weight_bits == bits


@pytest.mark.parametrize(
    "fields",
    [{"method": "gguf"}, {"method": "bitsandbytes"}, {"method": "bitsandbytes", "bits": 8},
     {"method": "torchao"}],
)  # fmt: skip
def test_every_measured_method_takes_a_quality_budget(fields: dict[str, object]) -> None:
    v = Variant.model_validate({**fields, "max_ppl_increase": "5%"})
    assert v.needs_job and v.max_ppl_increase == pytest.approx(0.05)


def test_gguf_is_served_by_the_plugin_on_gpus_and_refused_on_vllm_cpu() -> None:
    v = Variant(method=Method.GGUF)
    h100 = choose(planned_scheme(v), H100)
    # The plugin sets --quantization itself for a .gguf model: no flag from Quantgate.
    assert (h100.quantization, h100.kernel) == (None, "GGUFLinearMethod")
    assert H100.unsupported(Variant.model_validate({"method": "gguf", "bits": 5})) is None
    assert "vllm-gguf-plugin has CUDA and Triton kernels only" in (AVX2.unsupported(v) or "")
    assert not choose(planned_scheme(v), AVX2).supported


def test_autoround_is_a_calibrated_llm_compressor_method() -> None:
    v = Variant.model_validate({"method": "autoround", "calibration": {"samples": 32}})
    recipe = v.recipe()
    assert recipe["backend"] == "llmcompressor" and recipe["calibration"]["samples"] == 32
    assert (v.scheme, recipe["group_size"], recipe["symmetric"]) == ("W4A16", 128, True)
    assert choose(planned_scheme(v), H100).kernel == "MacheteLinearKernel"
    assert "AVX-512" in (AVX2.unsupported(v) or "")


def test_the_quantize_command_refuses_a_method_not_offered_with_the_reason(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "quantize", "--model-path", str(tmp_path),
         "--output-dir", str(tmp_path / "out"), "--method", "aqlm"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "method: method 'aqlm' is not offered: vLLM" in run.stderr
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_int8_is_built_as_llm_int8_for_vllm_to_load() -> None:
    v = Variant.model_validate({"method": "bitsandbytes", "bits": 8})
    assert v.needs_build and not v.measured_at_load and v.serve_quantization is None
    assert v.recipe() == {"method": "bitsandbytes", "backend": "transformers", "bits": 8}
    assert v.scheme == "LLM.int8"
    h100 = choose(planned_scheme(v), H100)
    assert (h100.quantization, h100.kernel) == ("bitsandbytes", "BitsAndBytesLinearMethod")
    built = read_scheme({"quantization_config": {"quant_method": "bitsandbytes",
                                                 "load_in_8bit": True}})  # fmt: skip
    assert built.name == "LLM.int8" and choose(built, H100).quantization == "bitsandbytes"
    assert "no bitsandbytes support" in (AVX2.unsupported(v) or "")


def test_torchao_int4_is_built_for_vllms_torchao_loader_on_gpus() -> None:
    v = Variant.model_validate({"method": "torchao", "group_size": 64})
    assert v.needs_build and v.serve_quantization is None and v.scheme == "W4A16"
    assert v.recipe() == {
        "method": "torchao",
        "backend": "transformers",
        "bits": 4,
        "group_size": 64,
    }
    h100 = choose(planned_scheme(v), H100)
    assert (h100.quantization, h100.kernel) == ("torchao", "TorchAOLinearMethod")
    built = read_scheme({"quantization_config": {"quant_method": "torchao", "quant_type": {}}})
    assert built.name == "torchao-int4"
    assert not choose(built, Hardware("cuda", gpus=(Gpu(0, "T4", 75, 15_360),))).supported
    assert "CUDA kernels only" in (AVX2.unsupported(v) or "")


@pytest.mark.parametrize(
    ("fields", "package"),
    [
        ({"method": "bitsandbytes"}, "bitsandbytes>=0.48.1"),
        ({"method": "torchao"}, "torchao==0.18.0"),
    ],
)
def test_a_missing_quantizer_library_names_what_to_install(
    model_dir: Path, tmp_path: Path, fields: dict[str, object], package: str
) -> None:
    """The job of a bitsandbytes (measure) or torchao (build) variant, in an environment
    without the library (the CPU machine's quantizer environment: both serve on GPUs only)."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "source": str(model_dir), "output": str(tmp_path / "out"),
        "recipe": Variant.model_validate(fields).recipe(), "evaluate": None,
    }))  # fmt: skip
    quantizer = Path(__file__).resolve().parent.parent / ".venv-quant" / "bin" / "python"
    run = subprocess.run(
        [str(quantizer), "-m", "serving.worker.quantize", str(spec)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "package, which does not import here (ModuleNotFoundError" in run.stderr
    assert f"pip install '{package}' into the quantizer environment" in run.stderr
    assert not (tmp_path / "out").exists()


# -- recommend ----------------------------------------------------------------------------
def test_sizes_are_read_with_their_units() -> None:
    assert parse_size("8B", "params") == 8e9 and parse_size("1.5b", "params") == 1.5e9
    assert parse_size("24GiB", "memory") == 24 and parse_size("80GB", "memory") == 80e9 / 2**30
    with pytest.raises(ValueError, match="unknown unit"):
        parse_size("24 furlongs", "memory")


def test_quality_takes_the_most_bits_that_fit_fp8_first_where_the_gpu_has_it() -> None:
    rec = recommend(8e9, 24, "quality", L4)  # bf16 would fit (14.9 GiB in 16.5), FP8 first
    assert rec.choice == "fp8" and any("this GPU has FP8 kernels" in r for r in rec.reasons)
    assert recommend(8e9, 80, "quality", H100).choice == "fp8"
    assert recommend(8e9, 24, "quality", A100).choice == "bf16"  # no FP8 kernels: most bits
    rec = recommend(8e9, 16, "quality", A100)  # FP8 weight-only (Marlin) on Ampere
    assert rec.choice == "fp8" and "not bf16: its 14.9 GiB do not fit" in rec.reasons
    rec = recommend(70e9, 80, "quality", H100)
    assert rec.choice == "gptq-w4a16" and rec.variant == {"method": "gptq", "bits": 4}
    assert "not fp8: its 65.2 GiB do not fit" in rec.reasons


def test_a_gpu_without_bf16_serves_the_base_in_float16() -> None:
    rec = recommend(1e9, 16, "quality", T4)
    assert rec.choice == "fp16" and rec.variant == {"method": "none"}
    assert rec.serve == {"dtype": "float16"}
    assert any("no bf16 on compute capability 7.5" in r for r in rec.reasons)


def test_the_kv_cache_is_sized_from_context_and_concurrency() -> None:
    assert 120 * 1024 < estimate_kv_per_token(8e9) <= 128 * 1024 + 1  # Llama-3.1-8B's 128 KiB
    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "hidden_size": 4096}  # fmt: skip
    assert kv_per_token_from_config(config) == 128 * 1024
    small = Workload(context_length=8192, concurrency=4)  # 4 GiB of KV cache
    assert recommend(8e9, 24, "quality", A100, workload=small).choice == "bf16"
    big = Workload(context_length=8192, concurrency=24)  # 24 GiB (1 GiB per request)
    rec = recommend(8e9, 80, "quality", A100, workload=big)  # (72 - 1.5 - 14.9) GiB: 55
    assert rec.choice == "bf16" and rec.considered[0]["full_context_requests"] == 55
    rec = recommend(8e9, 40, "quality", A100, workload=big)  # 10.5 GiB left for weights
    assert rec.choice == "fp8" and "not bf16: its 14.9 GiB do not fit" in rec.reasons


def test_70b_on_two_h100s_at_64_requests_of_8k_says_what_it_holds() -> None:
    load = Workload(context_length=8192, concurrency=64, gpus=2)
    rec = recommend(70e9, 80, "speed", H100, workload=load)
    assert rec.choice == "fp8" and rec.serve == {"tensor_parallel_size": 2}
    assert any("decode is compute-bound" in r for r in rec.reasons)
    assert any("holds 30 at full context" in r for r in rec.reasons), rec.reasons
    assert recommend(70e9, 80, "speed", H100, workload=replace(load, concurrency=8)).choice == (
        "gptq-w4a16"  # few streams: memory-bound, 4-bit weights
    )


def test_speed_and_memory_take_4_bit_weights_where_a_kernel_serves_them() -> None:
    assert recommend(8e9, 24, "speed", L4).choice == "gptq-w4a16"
    assert recommend(8e9, 24, "memory", H100).choice == "gptq-w4a16"
    cpu = recommend(8e9, 16, "memory", AVX2)  # no W4A16 kernel on AVX2: W4A8
    assert cpu.choice == "gptq-w4a8" and any("AVX-512" in r for r in cpu.reasons)


def test_measured_rows_decide_where_they_cover_the_candidates() -> None:
    measured = [
        MeasuredRow(method="gptq", scheme="W4A16", tokens_per_s_n=3785.0, ppl_increase=0.031),
        MeasuredRow(method="fp8", scheme="FP8", tokens_per_s_n=5075.0, ppl_increase=0.004),
    ]
    rec = recommend(8e9, 80, "speed", H100, measured)
    assert rec.choice == "fp8" and "measured 5075 tok/s" in rec.reasons[-1]
    # bf16 is the reference (+0); FP8 within a point of it: the rule's order decides
    assert recommend(8e9, 80, "quality", H100, measured).choice == "fp8"
    worse = [measured[1].model_copy(update={"ppl_increase": 0.02}), measured[0]]
    assert recommend(8e9, 80, "quality", H100, worse).choice == "bf16"


def test_nothing_fits_says_what_to_do() -> None:
    rec = recommend(405e9, 24, "memory", L4)
    assert rec.choice is None and "tensor parallelism" in rec.reasons[-1]


def test_the_recommend_command(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "recommend", *args],
                              capture_output=True, text=True)  # fmt: skip

    run = cli("--model-size", "8B", "--gpu-memory", "24GiB", "--priority", "speed", "--gpu", "l4")
    assert run.returncode == 0 and run.stdout.startswith("recommended: gptq-w4a16")
    run = cli("--model-size", "8B", "--gpu-memory", "24GiB", "--json")
    assert json.loads(run.stdout)["choice"] == "bf16"  # an A100: no FP8 kernels
    run = cli("--model-size", "8B", "--gpu-memory", "24GiB", "--concurrency", "4")
    assert run.returncode == 2 and "go together" in run.stderr
    pipe = subprocess.run(  # a reader that leaves early: no traceback
        f"{sys.executable} -m gateway.cli recommend --model-size 8B --gpu-memory 24GiB | head -1",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert pipe.stdout.startswith("recommended:") and "Traceback" not in pipe.stderr
    run = cli("--model-size", "8B", "--gpu-memory", "24GiB", "--gpu", "tpu")
    assert run.returncode == 2 and "unknown GPU 'tpu'" in run.stderr


def test_vllm_gets_the_gguf_file_and_the_folder_as_tokenizer(tmp_path: Path) -> None:
    plain = LaunchSpec(model_dir=tmp_path, served_names=("m",), port=1, log_path=tmp_path / "l")
    argv = plain.argv(Path("python"))
    assert argv[argv.index("--model") + 1] == str(tmp_path) and "--tokenizer" not in argv
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    argv = plain.argv(Path("python"))
    assert argv[argv.index("--model") + 1] == str(tmp_path / "model.gguf")
    assert argv[argv.index("--tokenizer") + 1] == str(tmp_path)
