"""AWQ through llm-compressor 0.14, with three changes of ours.

AWQ scales each smoothing mapping (input layernorm -> q/k/v, v -> o, post-attention layernorm
-> gate/up, up -> down) by a factor picked on a grid (20 points): for each point it quantizes the
mapping's layers and runs the parent module (attention block, MLP...) again to measure how far
its output moves. llm-compressor runs that grid over *every* calibration token. At 512 x 2048
tokens on an 8B shape that projected to ~23.5 min on an H200; GPTQ took 4.9 min at that size.

Here the grid's loss is measured on a bounded share of the calibration (``LOSS_TOKENS``, the
first batches; AutoAWQ's whole calibration is 128 x 512 = 65,536 tokens), while the activation
statistics that set the scales' shape (each channel's mean magnitude) still come from every
token. The cache of parent inputs the grid replays is bounded with it, which also cuts its memory.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch

LOSS_TOKENS = 65_536
LOSS_TOKENS_ENV = "QUANTGATE_AWQ_LOSS_TOKENS"  # a study's knob: 0 measures on every token


def loss_tokens() -> int | None:
    """The grid search's token budget; None for every token."""
    raw = os.environ.get(LOSS_TOKENS_ENV, "").strip()
    tokens = int(raw) if raw else LOSS_TOKENS
    return tokens if tokens > 0 else None


def prepare(tokens: int | None) -> None:
    """Apply the three changes in this (job) process; each job runs in its own process."""
    allow_cpu_awq()
    lean_outputs()
    bound_loss_tokens(tokens)
    share = f"the first {tokens:,} calibration tokens" if tokens else "every calibration token"
    print(f"AWQ: grid search loss over {share}; activation statistics over all", flush=True)


def allow_cpu_awq() -> None:
    """llm-compressor 0.14's AWQ pins host memory, which fails with no accelerator:
    'Cannot access accelerator device when none is available.' Pinning only speeds up
    host-to-device copies, so on a CPU-only machine it is skipped."""
    if torch.cuda.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *a, **k: None


def lean_outputs() -> None:
    """llm-compressor 0.14's AWQ runs every cached batch through a mapping's parent module and
    keeps each whole output until the last batch is done; only then does it take the first
    element of tuples. Under the calibration's eager attention a Llama attention block returns
    its attention weights as the second element (batch x heads x seq x seq): 128 GiB at
    512 x 2048 tokens on an 8B shape, which ran a 140 GiB H200 out of memory. Here the first
    element is taken as each batch finishes; the result is the same."""
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.transform.awq.base import AWQModifier

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def run_samples(self: Any, module: torch.nn.Module) -> list[torch.Tensor]:
        cache = self._parent_args_cache[module]
        batches = cache.iter_prefetch() if active_session().state.sequential_prefetch else cache
        outputs = []
        for batch in batches:
            output = module(**batch)
            outputs.append(output[0] if isinstance(output, tuple) else output)
        return outputs

    AWQModifier._run_samples = run_samples


def bound_loss_tokens(tokens: int | None) -> None:
    """Keep only the first batches, up to ``tokens``, in each parent module's input cache: the
    grid search replays that cache and nothing else. The hooks that gather the activation
    statistics are separate and still see every batch."""
    from llmcompressor.modifiers.transform.awq.base import AWQModifier

    original = getattr(AWQModifier, "_quantgate_setup_hooks", None)
    if original is None:
        original = AWQModifier._setup_activation_cache_hooks
        AWQModifier._quantgate_setup_hooks = original
    if tokens is None:
        AWQModifier._setup_activation_cache_hooks = original
        return

    def setup(self: Any) -> None:
        original(self)
        for cache in self._parent_args_cache.values():
            cache.append = bounded(cache, limit=tokens)

    AWQModifier._setup_activation_cache_hooks = setup


def bounded(cache: Any, limit: int) -> Callable[[dict[str, Any]], None]:
    """``cache.append`` that drops every batch once ``limit`` tokens are kept.

    It reaches the cache through a weak reference. Holding the bound method instead made a
    cycle (cache -> its ``append`` -> cache) that reference counting cannot free: AWQ drops
    each layer's cache once the layer is smoothed, and every one stayed until Python's cycle
    collector ran a full pass, which in a process holding a large model is rare. On the 8B
    shape at a 128 x 512 token bound a layer's cache is 2.75 GiB; after 31 layers that is the
    ~85 GiB over plan with which the last layer ran a 140 GiB H200 out of memory."""
    append = type(cache).append
    ref = weakref.ref(cache)
    kept = 0

    def append_bounded(values: dict[str, Any]) -> None:
        nonlocal kept
        owner = ref()
        assert owner is not None  # only the cache holds this function: it is alive if called
        if kept >= limit:
            return
        kept += batch_tokens(values)
        append(owner, values)

    return append_bounded


def batch_tokens(values: dict[str, Any]) -> int:
    """Tokens in one cached batch: batch x sequence of its first activation tensor."""
    for value in values.values():
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0] * value.shape[1])
    return 1
