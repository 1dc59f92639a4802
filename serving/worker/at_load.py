"""bitsandbytes through transformers: the quality of NF4, which vLLM quantizes at load
(nothing is built), and LLM.int8 checkpoints, which vLLM loads only prebuilt.

The base is loaded through transformers with the quantization vLLM applies as it loads it, and
its held-out perplexity is measured, so the quality gate and the benchmark table have a number
for it. vLLM 0.26's bitsandbytes loader quantizes every linear layer but the output head with
``quantize_4bit(quant_type="nf4", compress_statistics=True)`` (blocks of 64, the block scales
quantized again) and computes in the model's dtype: the same as transformers'
``BitsAndBytesConfig`` below. For int8 vLLM has no load-time path (its loader reads 8-bit
weights only from a checkpoint that has them), so ``build_int8`` writes one: transformers'
LLM.int8 (per-row absmax int8, outlier columns kept in 16 bits at run time), saved with its
``quantization_config``; bitsandbytes' int8 needs a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.worker.protocol import fail

INSTALL = "pip install 'bitsandbytes>=0.48.1' into the quantizer environment"


def require(method: str) -> None:
    """Fail now, before any work, when the library that measures ``method`` is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a library that does not load here
        fail(
            f"method {method!r} is measured with the bitsandbytes package, which does not "
            f"import here ({type(exc).__name__}: {exc}); {INSTALL}"
        )


def build_int8(source: Path, output: Path) -> Any:
    """Write the LLM.int8 checkpoint of ``source`` into ``output``; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if not torch.cuda.is_available():
        fail("bitsandbytes int8 (LLM.int8) is built on a GPU: this machine has none")
    model = AutoModelForCausalLM.from_pretrained(
        str(source),
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        dtype=torch.bfloat16,
        device_map="cuda",
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
