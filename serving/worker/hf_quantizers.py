"""Quantizers through transformers' integrations: bitsandbytes (the quality of NF4, which vLLM
quantizes at load, nothing built; LLM.int8 checkpoints, which vLLM loads only prebuilt) and
torchao (int4 weight-only checkpoints).

The base is loaded through transformers with the quantization vLLM applies as it loads it, and
its held-out perplexity is measured, so the quality gate and the benchmark table have a number
for it. vLLM 0.26's bitsandbytes loader quantizes every linear layer but the output head with
``quantize_4bit(quant_type="nf4", compress_statistics=True)`` (blocks of 64, the block scales
quantized again) and computes in the model's dtype: the same as transformers'
``BitsAndBytesConfig`` below. For int8 vLLM has no load-time path (its loader reads 8-bit
weights only from a checkpoint that has them), so ``build`` writes one: transformers'
LLM.int8 (per-row absmax int8, outlier columns kept in 16 bits at run time), saved with its
``quantization_config``; bitsandbytes' int8 needs a GPU.

torchao 0.18's int4 weight-only (``Int4WeightOnlyConfig``, asymmetric groups, calibration-free)
packs for CUDA kernels only: its default layout for mslk's kernels (not on PyPI for this torch),
or tinygemm's ``tile_packed_to_4d``, which PyTorch itself runs (``_weight_int4pack_mm``, bf16,
compute capability >= 8.0). Its CPU layout is gone. ``build`` writes the tile-packed
tensors as torchao's safetensors, which vLLM 0.26 loads (``--quantization torchao``); it needs a
GPU too.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from serving.worker.protocol import HF_QUANTIZER_PACKAGES as PACKAGES
from serving.worker.protocol import fail


def require(method: str) -> None:
    """Fail now, before any work, when the library that measures or builds ``method`` is
    missing."""
    module, requirement = PACKAGES[method]
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a library that does not load here
        fail(
            f"method {method!r} needs the {module} package, which does not import here "
            f"({type(exc).__name__}: {exc}); pip install '{requirement}' into the quantizer "
            "environment"
        )


def build(source: Path, output: Path, recipe: dict[str, Any]) -> Any:
    """Write the checkpoint of ``recipe`` (bitsandbytes int8, torchao int4) from ``source`` into
    ``output``; returns the model, in memory, for its perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TorchAoConfig

    what = "bitsandbytes int8 (LLM.int8)" if recipe["method"] == "bitsandbytes" else "torchao int4"
    if not torch.cuda.is_available():
        fail(f"{what} is built on a GPU: this machine has none")
    if recipe["method"] == "bitsandbytes":
        config: Any = BitsAndBytesConfig(load_in_8bit=True)
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        config = TorchAoConfig(
            Int4WeightOnlyConfig(
                group_size=recipe["group_size"], int4_packing_format="tile_packed_to_4d"
            )
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(source), quantization_config=config, dtype=torch.bfloat16, device_map="cuda"
    ).eval()
    model.save_pretrained(str(output))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(output))
    return model


def load(source: Path) -> Any:
    """The base, NF4-quantized as vLLM quantizes it at load."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        str(source), quantization_config=config, dtype=torch.bfloat16, device_map=device
    )
    return model.eval()
