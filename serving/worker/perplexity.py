"""Perplexity on held-out text: the built-in corpus's held-out split, never used to train or
calibrate. Strided evaluation: windows of ``context`` tokens, each scoring only the tokens the
previous window did not, so every token but the first is scored once with up to
``context - stride`` tokens of history.

    python -m serving.worker.perplexity MODEL_DIR [--context 256] [--stride 128]

prints ``QUANTGATE_RESULT {"perplexity": ..., "tokens": ...}``. Quantized checkpoints
(compressed-tensors) load through transformers, which applies their weight and activation
quantization in the forward pass; evaluation runs in float32 on the CPU (the device's dtype on
a GPU).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from serving.worker.corpus import paragraphs
from serving.worker.gguf import GGUF_FILE
from serving.worker.protocol import result


def heldout_ids(tok: PreTrainedTokenizerBase) -> torch.Tensor:
    ids: list[int] = []
    for enc in tok(paragraphs("heldout"), add_special_tokens=False)["input_ids"]:
        ids += [*enc, tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def perplexity(model: Any, ids: torch.Tensor, context: int, stride: int) -> dict[str, Any]:
    with torch.no_grad():
        nll, scored = _strided_nll(model, ids, context, stride)
    return {
        "perplexity": round(math.exp(nll / scored), 4),
        "tokens": scored,
        "context": context,
        "stride": stride,
        "text": "built-in corpus, held-out split",
    }


def _strided_nll(model: Any, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    device = next(model.parameters()).device
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + context, len(ids))
        window = ids[begin:end].unsqueeze(0).to(device)
        labels = window.clone()
        labels[:, : -(end - prev_end)] = -100  # already scored by the previous window
        count = int((labels[:, 1:] != -100).sum())
        nll += float(model(input_ids=window, labels=labels).loss) * count
        scored, prev_end = scored + count, end
        if end == len(ids):
            break
    return nll, scored


def load(model_dir: Path) -> Any:
    """The checkpoint in ``model_dir``; a GGUF file there is dequantized by transformers (the
    weights llama.cpp's kernels would compute with, in float)."""
    device = "cuda" if torch.cuda.is_available() else None
    dtype = "auto" if device else torch.float32  # bf16 matmuls are slow on CPUs without AMX
    extra = {"gguf_file": GGUF_FILE} if (model_dir / GGUF_FILE).is_file() else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, device_map=device, **extra
    )
    return model.eval()


def measure(
    model_dir: Path, context: int, stride: int, model: Any = None, tokenizer_dir: Path | None = None
) -> dict[str, Any]:
    """Perplexity of the checkpoint in ``model_dir`` (or of ``model``, already in memory); the
    tokenizer is ``model_dir``'s, else ``tokenizer_dir``'s."""
    t0 = time.perf_counter()
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file() or tokenizer_dir is None
    tok = AutoTokenizer.from_pretrained(str(model_dir if has_tokenizer else tokenizer_dir))
    found = perplexity(
        model if model is not None else load(model_dir), heldout_ids(tok), context, stride
    )
    return {**found, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="perplexity", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    result(measure(args.model_dir, args.context, args.stride))


if __name__ == "__main__":
    main()
