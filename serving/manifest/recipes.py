"""A variant's recipe: its hash, and its problems (each method family says its own,
``serving.methods``)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from serving.methods import Method, family

if TYPE_CHECKING:
    from serving.manifest.variants import Variant


def writes_weights(recipe: dict[str, Any]) -> bool:
    """Whether a job with this recipe writes a checkpoint: every built recipe names its backend;
    a measure-only one (bitsandbytes NF4, quantized by vLLM at load) does not."""
    return "backend" in recipe


def recipe_hash(recipe: dict[str, Any]) -> str:
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def recipe_problems(v: Variant) -> list[str]:
    """Every way the variant's fields contradict its method (empty: a valid recipe)."""
    if v.upstream is not None and v.method is not Method.NONE:
        return ["a variant with an upstream is served as is: use method 'none'"]
    problems = family(v.method).problems(v)
    if v.max_ppl_increase is not None and not 0 < v.max_ppl_increase <= 10:
        problems.append("max_ppl_increase must be a fraction above 0 (0.05 or '5%')")
    return problems
