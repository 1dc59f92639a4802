"""Legacy backends behind the same interface: AutoAWQ and AutoGPTQ.

Both are deprecated upstream (AutoAWQ "will no longer be maintained", last tested with torch
2.6; AutoGPTQ archived in favour of GPTQModel) and neither is in Quantgate's quantizer lock.
Where one is installed and imports, it is used; where it does not, the job stops at once with
the import error and the backend to use instead.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from serving.worker.protocol import fail, progress

MODULES = {"llmcompressor": "llmcompressor", "autoawq": "awq", "autogptq": "auto_gptq"}
INSTEAD = {
    "autoawq": "use backend 'llmcompressor' with method 'awq' (AutoAWQ was folded into it)",
    "autogptq": "use backend 'llmcompressor' with method 'gptq'",
}


def require(backend: str) -> None:
    """Fail now, before any work, when the backend's library does not import here."""
    try:
        importlib.import_module(MODULES[backend])
    except Exception as exc:  # ImportError, or a library broken by newer torch/transformers
        fail(
            f"backend {backend!r} is not usable in the quantizer environment "
            f"({type(exc).__name__}: {exc}); {INSTEAD.get(backend, 'reinstall it')}"
        )
    if backend == "autogptq":
        fail(f"backend 'autogptq' imports, but Quantgate does not drive it; {INSTEAD[backend]}")


def build_autoawq(
    source: Path, output: Path, recipe: dict[str, Any], rows: list[list[int]],
    tok: PreTrainedTokenizerBase,
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """AutoAWQ (GEMM format, 4-bit). Returns the quantized model, evaluated in memory:
    transformers 5 no longer loads AutoAWQ checkpoints by itself."""
    from awq import AutoAWQForCausalLM

    if recipe["bits"] != 4 or recipe["activation_bits"] != 16 or recipe["group_size"] == -1:
        fail("backend 'autoawq' builds W4A16 with a group size only; use backend 'llmcompressor'")
    t0 = time.perf_counter()
    model = AutoAWQForCausalLM.from_pretrained(str(source), device_map="cpu")
    t1 = time.perf_counter()
    progress("quantize", layers_done=0, layers_total=len(model.model.model.layers))
    config = {
        "zero_point": not recipe["symmetric"],
        "q_group_size": recipe["group_size"],
        "w_bit": recipe["bits"],
        "version": "GEMM",
        "modules_to_not_convert": [p for p in recipe["ignore"] if p != "lm_head"] or None,
    }
    model.quantize(
        tok,
        quant_config=config,
        calib_data=rows,
        max_calib_samples=len(rows),
        max_calib_seq_len=len(rows[0]),
    )
    t2 = time.perf_counter()
    model.save_quantized(str(output))
    tok.save_pretrained(str(output))
    timings = {"load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": time.perf_counter() - t2}
    return model.model.float().eval(), timings
