"""Where the quantizer keeps what it caches during calibration: on the GPU when it fits.

Two caches grow with the calibration tokens (``rows x seq``):

- llm-compressor's sequential pipeline keeps every batch's hidden states between decoder
  layers, in and out (``hidden_size`` values per token each), with each batch's causal mask
  (``seq x seq`` per row). Its default is host memory, so every layer copies them to the GPU
  and back twice (calibrate, then propagate).
- AWQ caches, per batch, the inputs of each smoothing mapping's parent module of the layer it is
  working on: on a Llama layer the attention block's and the MLP's (``hidden_size`` each) and
  the down projection's (``intermediate_size``); its grid search then runs them ~20 times per
  mapping, holding the parent's outputs twice (before and after scaling).

For an 8B Llama at 512 x 2048 tokens that is 21.5 GB and 64 GB; AWQ's is 3 GB when its grid
search is bounded to 128 x 512 tokens (awq.py, the default). The plan keeps both on the GPU
when together they take at most ``GPU_SHARE`` of the memory free after loading the model (the
rest is for eager attention and Hessians), else AWQ's (used ~20 times per mapping) before the
pipeline's (used twice per layer), else neither. No torch here: the rule is plain arithmetic,
tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU_SHARE = 0.7  # of the GPU memory free after loading the model
BYTES = 2  # bf16 / fp16 activations


@dataclass(frozen=True)
class Offload:
    """What goes to host memory: the pipeline's hidden states, AWQ's activation cache."""

    pipeline: bool
    awq: bool


def _dims(config: dict[str, Any]) -> tuple[int, int]:
    hidden = int(config.get("hidden_size") or 0)
    return hidden, int(config.get("intermediate_size") or 4 * hidden)


def pipeline_cache_bytes(rows: int, seq: int, config: dict[str, Any]) -> int:
    """Hidden states into and out of one decoder layer, and the causal masks, for every row."""
    hidden, _ = _dims(config)
    return rows * seq * (2 * hidden + seq) * BYTES


def awq_cache_bytes(tokens: int, config: dict[str, Any]) -> int:
    """AWQ's activation cache for one decoder layer of a Llama-like ``config``."""
    hidden, intermediate = _dims(config)
    return tokens * (2 * hidden + intermediate) * BYTES


def awq_outputs_bytes(tokens: int, config: dict[str, Any]) -> int:
    """A parent module's outputs for every batch, before and after scaling."""
    hidden, _ = _dims(config)
    return 2 * tokens * hidden * BYTES


def plan(
    rows: int, seq: int, config: dict[str, Any], free_gpu: int | None, awq_tokens: int = 0
) -> Offload:
    """What to keep in host memory. ``free_gpu`` is None when the model is not on a GPU: then
    everything already is in host memory and nothing is moved. ``awq_tokens``: the tokens AWQ's
    grid search replays (0: not AWQ)."""
    if free_gpu is None:
        return Offload(pipeline=False, awq=False)
    budget = GPU_SHARE * free_gpu
    pipeline = pipeline_cache_bytes(rows, seq, config)
    awq = awq_tokens > 0
    awq_need = awq_cache_bytes(awq_tokens, config) + awq_outputs_bytes(awq_tokens, config)
    if pipeline + awq_need <= budget:
        return Offload(pipeline=False, awq=False)
    if awq and awq_need <= budget:
        return Offload(pipeline=True, awq=False)
    return Offload(pipeline=pipeline > budget, awq=awq)
