"""AutoRound through llm-compressor 0.14: its zero points, which that release drops.

llm-compressor's AutoRoundModifier copies AutoRound's tuned scales into the compressed-tensors
``weight_scale`` of each layer, but not its zero points: every ``weight_zero_point`` keeps the
placeholder it registered, 0. A symmetric variant needs none; an asymmetric one is then wrong
(SmolLM2 AutoRound W4A16 g64 asymmetric, built so: +169 % perplexity on the worst domain,
where round-to-nearest costs +46 %; every zero point in the checkpoint read 0).

AutoRound's zero point ``zp`` is unsigned (``q = round(w / scale) + zp`` in ``[0, 2^bits - 1]``);
compressed-tensors' is signed (``q`` in ``[-2^(bits-1), 2^(bits-1) - 1]``): the same grid, so
``zp - 2^(bits-1)``. Here each tuned layer's zero point is written that way before the
modifier's own post-processing runs, which then leaves it in place.
"""

from __future__ import annotations

from typing import Any

import torch


def keep_zero_points() -> None:
    """Patch this (job) process's AutoRoundModifier to carry AutoRound's zero points over."""
    from llmcompressor.modifiers.autoround.base import AutoRoundModifier

    original = getattr(AutoRoundModifier, "_quantgate_postprocess", None)
    if original is None:
        original = AutoRoundModifier._postprocess_qparams
        AutoRoundModifier._quantgate_postprocess = original

    def postprocess(self: Any, model: torch.nn.Module, registered: dict[str, Any]) -> None:
        for name, module in model.named_modules():
            placeholder = registered.get(name, {}).get("weight_zero_point")
            if placeholder is not None:
                carry_zero_point(module, placeholder)
        original(self, model, registered)

    AutoRoundModifier._postprocess_qparams = postprocess


def carry_zero_point(module: torch.nn.Module, placeholder: torch.Tensor) -> None:
    """Register AutoRound's ``zp`` of ``module`` as its signed ``weight_zero_point``."""
    zp = getattr(module, "zp", None)
    scheme = getattr(module, "quantization_scheme", None)
    weights = getattr(scheme, "weights", None)
    if not isinstance(zp, torch.Tensor) or weights is None or weights.symmetric:
        return
    signed = zp.float() - 2 ** (weights.num_bits - 1)
    value = signed.round().to(placeholder.dtype).to(placeholder.device).reshape(placeholder.shape)
    if hasattr(module, "weight_zero_point"):
        delattr(module, "weight_zero_point")
    module.register_parameter("weight_zero_point", torch.nn.Parameter(value, requires_grad=False))
    delattr(module, "zp")
