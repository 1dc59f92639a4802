"""Where AWQ keeps the activations it caches: on the GPU when they fit easily, else in host memory.

llm-compressor's AWQ caches, for every calibration sample, the inputs of each smoothing
mapping's parent module of the decoder layer it is working on: on a Llama layer the attention
block's and the MLP's inputs (``hidden_size`` values per token each) and the down projection's
(``intermediate_size``). Kept on the GPU (its default for dense models) that is
``tokens x (2 x hidden + intermediate) x 2`` bytes: 47 GiB for an 8B Llama at 512 x 2048
calibration tokens, which ran a 140 GiB H200 out of memory (docs/benchmarks.md). Kept on the
host it costs copies instead. No torch here: the rule is plain arithmetic, tested on its own.
"""

from __future__ import annotations

from typing import Any

GPU_SHARE = 0.25  # of the GPU memory free after loading the model; the rest is for the pipeline


def awq_cache_bytes(tokens: int, config: dict[str, Any], bytes_per_value: int = 2) -> int:
    """Bytes of AWQ's activation cache for one decoder layer of a Llama-like ``config``."""
    hidden = int(config.get("hidden_size") or 0)
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    return tokens * (2 * hidden + intermediate) * bytes_per_value


def awq_offload(tokens: int, config: dict[str, Any], free_gpu_bytes: int | None) -> bool:
    """Whether AWQ should cache activations in host memory (``offload_device='cpu'``).

    ``free_gpu_bytes`` is None when the model is not on a GPU: then there is nothing to save.
    """
    if free_gpu_bytes is None:
        return False
    return awq_cache_bytes(tokens, config) > GPU_SHARE * free_gpu_bytes
