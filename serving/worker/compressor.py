"""The llm-compressor backend: GPTQ, AWQ, SmoothQuant + GPTQ (W8A8), AutoRound and
round-to-nearest.

Every method is one ``oneshot`` over a recipe of modifiers built from Quantgate's recipe, with
the weight (and activation) precision written as a compressed-tensors ``QuantizationScheme`` so
that any bit width the method takes (2, 3, 4, 8) uses one code path. Output: compressed-tensors
(``save_compressed=True``), which vLLM loads.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.core import LifecycleCallbacks
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from serving.worker import autoround, awq
from serving.worker.memory import Offload, awq_cache_bytes, pipeline_cache_bytes, plan
from serving.worker.protocol import fail, progress

# Calibration tokens per forward batch. Batching changes no result (GPTQ's Hessians and AWQ's
# losses are sums over tokens); it only cuts per-call overhead. On the CPU one 2048-token row
# already fills the cores; a GPU ran a 2048-token row through one 8B layer at ~130 rows/s,
# far from its throughput.
CALIBRATION_TOKENS_PER_BATCH = {"cpu": 2048, "cuda": 16384}
AUTOROUND_BATCH = 8  # AutoRoundModifier's batch_size


@contextlib.contextmanager
def layer_progress(model: torch.nn.Module, passes: int) -> Iterator[None]:
    """Report decoder layers done / total while llm-compressor calibrates.

    Its sequential pipeline ends each layer with ``LifecycleCallbacks.sequential_epoch_end``
    (one pass per calibrated modifier: SmoothQuant + GPTQ makes two); that call is wrapped,
    for the duration, to count the layers it names.
    """
    types = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in types]
    layer_of = {id(sub): i for i, layer in enumerate(layers) for sub in layer.modules()}
    total, done = len(layers) * passes, 0
    original = LifecycleCallbacks.__dict__["sequential_epoch_end"]

    def epoch_end(cls: type, /, modules: list[torch.nn.Module], **kwargs: Any) -> Any:
        nonlocal done
        done = min(total, done + len({layer_of[id(m)] for m in modules if id(m) in layer_of}))
        progress("quantize", layers_done=done, layers_total=total)
        if torch.cuda.is_available():  # a cache that grows from layer to layer shows here
            gib = torch.cuda.memory_allocated() / 2**30
            print(f"layer {done}/{total}: {gib:.1f} GiB of GPU memory allocated", flush=True)
        return original.__func__(cls, modules, **kwargs)

    progress("quantize", layers_done=0, layers_total=total)
    LifecycleCallbacks.sequential_epoch_end = classmethod(epoch_end)
    try:
        yield
    finally:
        LifecycleCallbacks.sequential_epoch_end = original
    progress("quantize", layers_done=total, layers_total=total)


def scheme(recipe: dict[str, Any]) -> QuantizationScheme:
    group = recipe["group_size"]
    weights = QuantizationArgs(
        num_bits=recipe["bits"],
        type="int",
        symmetric=recipe["symmetric"],
        strategy="channel" if group == -1 else "group",
        group_size=None if group == -1 else group,
    )
    activations = None
    if recipe["activation_bits"] == 8:
        activations = QuantizationArgs(
            num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True
        )
    return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)


def modifiers(recipe: dict[str, Any], offload_cache: bool = False) -> list[Any]:
    groups = {"group_0": scheme(recipe)}
    ignore, method = recipe["ignore"], recipe["method"]
    if method in ("gptq", "w8a8"):
        from llmcompressor.modifiers.gptq import GPTQModifier

        gptq = GPTQModifier(config_groups=groups, ignore=ignore)
        if method == "gptq":
            return [gptq]
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=0.8), gptq]
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        awq.prepare(awq.loss_tokens())
        offload = {"offload_device": "cpu"} if offload_cache else {}  # see memory.py
        return [AWQModifier(config_groups=groups, ignore=ignore, **offload)]
    if method == "autoround":
        from llmcompressor.modifiers.autoround import AutoRoundModifier

        autoround.keep_zero_points()

        # torch.compile of each block pays off on GPUs; on a CPU it costs more than it saves
        compiled = torch.cuda.is_available()
        return [
            AutoRoundModifier(
                config_groups=groups,
                ignore=ignore,
                enable_torch_compile=compiled,
                batch_size=AUTOROUND_BATCH,
            )
        ]
    if method == "rtn":
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(config_groups=groups, ignore=ignore)]
    fail(f"backend 'llmcompressor' has no method {method!r}")


def ignored(name: str, patterns: list[str]) -> bool:
    """compressed-tensors' matching of ``ignore`` entries against a module name."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def check_group_size(model: torch.nn.Module, recipe: dict[str, Any]) -> None:
    group = recipe["group_size"]
    if group == -1:
        return
    bad = [
        f"{name} ({m.in_features})"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and not ignored(name, recipe["ignore"])
        and m.in_features % group
    ]
    if bad:
        fail(
            f"group_size {group} does not divide the input features of {len(bad)} layers: "
            f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; "
            "pick a divisor or add them to ignore"
        )


def build(
    source: Path, output: Path, recipe: dict[str, Any], rows: list[list[int]] | None,
    tok: PreTrainedTokenizerBase,
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """Quantize ``source`` into ``output``; returns None (evaluate the saved checkpoint) and
    the timings."""
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:
        # GPTQ accumulates each layer's Hessian (X^T X over every calibration token) in fp32:
        # at 512 x 2048 tokens on an 8B shape that was 3/4 of an H200's time per layer.
        # TF32 tensor cores do it several times faster; the Hessian is damped and inverted
        # afterwards, and GPTQ's per-module error is compared with fp32 in docs/benchmarks.md.
        torch.backends.cuda.matmul.allow_tf32 = True
    # float32 on the CPU: bf16 matmuls are emulated without AVX-512 BF16/AMX (~10x slower)
    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype="auto" if cuda else torch.float32, device_map="cuda" if cuda else None
    )
    saved_dtype = source_dtype(source)
    check_group_size(model, recipe)
    t1 = time.perf_counter()
    offload = _offload(model, rows, use_awq=recipe["method"] == "awq")
    steps = modifiers(recipe, offload_cache=offload.awq)
    with layer_progress(model, passes=len(steps) if rows else 1):
        # AutoRound tunes on batches of its own: auto-round 0.15 refused the model when the
        # calibration came in batches of 32 (a GPU's default here); measured to work: one
        # sample per forward on an H100, batches of its batch_size (8) on the CPU
        cap = (1 if cuda else AUTOROUND_BATCH) if recipe["method"] == "autoround" else None
        seed = (recipe.get("calibration") or {}).get("seed", 0)
        _oneshot(model, steps, rows, offload.pipeline, max_batch=cap, seed=seed)
    t2 = time.perf_counter()
    model.to(saved_dtype)
    model.save_pretrained(str(output), save_compressed=True)
    tok.save_pretrained(str(output))
    timings = {"load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": time.perf_counter() - t2}
    return None, timings


def _offload(model: torch.nn.Module, rows: list[list[int]] | None, use_awq: bool) -> Offload:
    """What calibration caches in host memory rather than on the GPU (memory.py)."""
    if not rows or not torch.cuda.is_available():
        return Offload(pipeline=False, awq=False)
    free, _ = torch.cuda.mem_get_info()
    config = model.config.to_dict()
    count, seq, gib = len(rows), len(rows[0]), 2**30
    awq_tokens = min(count * seq, awq.loss_tokens() or count * seq) if use_awq else 0
    where = plan(count, seq, config, free, awq_tokens)
    sizes = f"pipeline {pipeline_cache_bytes(count, seq, config) / gib:.1f} GiB in " + (
        "host" if where.pipeline else "GPU"
    )
    if use_awq:
        awq_gib = awq_cache_bytes(awq_tokens, config) / gib
        sizes += f", AWQ {awq_gib:.1f} GiB in " + ("host" if where.awq else "GPU")
    print(f"calibration caches: {sizes} memory ({free / gib:.1f} GiB free on the GPU)", flush=True)
    return where


def source_dtype(source: Path) -> torch.dtype:
    """The dtype the checkpoint was saved in: the variant keeps it for what stays unquantized."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.bfloat16


def _oneshot(
    model: torch.nn.Module,
    steps: list[Any],
    rows: list[list[int]] | None,
    offload: bool,
    max_batch: int | None = None,
    seed: int = 0,
) -> None:
    """llm-compressor's oneshot over ``rows``. It shuffles them (a RandomSampler drawing on
    torch's global generator, unseeded): seeded here, so one recipe builds one checkpoint. The
    order matters wherever only the first batches count, as AWQ's bounded grid search: unseeded,
    four builds of one recipe on SmolLM2 came out +24.4 to +26.1 % on the worst domain."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    tokens_per_batch = CALIBRATION_TOKENS_PER_BATCH.get(
        device.type, CALIBRATION_TOKENS_PER_BATCH["cpu"]
    )
    if rows is None:
        oneshot(model=model, recipe=steps)
    else:
        seq = len(rows[0])
        oneshot(
            model=model,
            dataset=Dataset.from_dict(
                {"input_ids": rows, "attention_mask": [[1] * seq] * len(rows)}
            ),
            recipe=steps,
            max_seq_length=seq,
            num_calibration_samples=len(rows),
            batch_size=max(1, min(len(rows), tokens_per_batch // seq, max_batch or len(rows))),
            sequential_offload_device="cpu" if offload else str(device),
        )
