"""A GGUF file imported into a Hugging Face checkpoint: what a ``source: model.gguf`` becomes.

transformers (with the ``gguf`` package) reads the file: the tokenizer and its chat template
from the metadata, the weights dequantized to float. The model it returns is marked as coming
from GGUF and refuses to be saved as is, so a plain model is built from the same config and the
weights copied over (embeddings tied again where the config ties them), then saved as bf16
safetensors beside the tokenizer.

A chat template that ends each turn with ``<|im_end|>`` (ChatML, as SmolLM2's) makes that token
the end of sequence in the config, the generation config and the tokenizer, so chat answers stop
at the end of the turn (the file's own EOS, often ``<|endoftext|>``, is kept as a second stop).

"Base" for a quantized GGUF (Q4_1, Q8_0, ...) means these dequantized weights: they already sit
on the file's grid, so a variant built from them is compared with the file, not with the
original float model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serving.worker.protocol import fail, progress

TURN_END = "<|im_end|>"


def require() -> None:
    """Fail before any work when transformers cannot read GGUF files here."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        fail(
            f"importing a GGUF source needs the gguf package in the quantizer environment "
            f"({exc}): pip install 'gguf==0.19.0' there (make install does)"
        )


def import_gguf(path: Path, output: Path) -> dict[str, Any]:
    """Write ``path`` as a bf16 Hugging Face checkpoint into ``output``; return timings and
    what was read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    progress("load", file=str(path))
    folder, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds for files it cannot read
        fail(f"transformers cannot load the GGUF file {path}: {type(exc).__name__}: {exc}")
    load_s = time.perf_counter() - t0
    progress("convert", architecture=type(loaded).__name__)
    model = _plain_copy(loaded, torch.bfloat16)
    del loaded
    _special_tokens(tok, model.config)
    _end_turns(tok, model)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output), safe_serialization=True)
    tok.save_pretrained(str(output))
    return {
        "load_s": load_s,
        "convert_s": time.perf_counter() - t0 - load_s,
        "architecture": model.config.architectures[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tok.eos_token,
    }


def _plain_copy(loaded: Any, dtype: Any) -> Any:
    """The same weights in a model transformers will save (no GGUF marks on its config)."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(loaded).__name__]
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        fail(f"the GGUF's weights do not fit its architecture: missing {sorted(missing)[:5]}, "
             f"unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    model.tie_weights()
    return model.eval()


def _special_tokens(tok: Any, config: Any) -> None:
    """BOS and EOS as the file's metadata names them, where transformers' tokenizer left them
    unset (it does for some BPE vocabularies llama.cpp's converter wrote)."""
    for name in ("bos", "eos"):
        token_id = getattr(config, f"{name}_token_id", None)
        if getattr(tok, f"{name}_token") is None and isinstance(token_id, int):
            setattr(tok, f"{name}_token", tok.convert_ids_to_tokens(token_id))
    tok.clean_up_tokenization_spaces = False  # a BPE tokenizer: cleaning would drop spaces


def _end_turns(tok: Any, model: Any) -> None:
    """ChatML templates end turns with <|im_end|>: make it EOS, keep the file's as a stop."""
    template = tok.chat_template or ""
    turn_end = tok.convert_tokens_to_ids(TURN_END) if TURN_END in template else None
    if turn_end is None or turn_end == tok.unk_token_id:
        return
    stops = [turn_end] + [i for i in [model.config.eos_token_id] if i not in (None, turn_end)]
    tok.eos_token = TURN_END
    model.config.eos_token_id = turn_end
    model.generation_config.eos_token_id = stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
