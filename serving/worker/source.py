"""Prepare a model's source in the worker: import a GGUF file or download a Hub repository
into the output folder, then measure the base's held-out perplexity there.

The perplexity is measured once per source (later builds of its variants reuse it) and is a
check of the import as well: loaders dequantize some architectures wrongly, and a checkpoint
whose perplexity is absurd even on its best domain (above ``MAX_BASE_PERPLEXITY``, or not
finite) is refused with the number rather than served.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from serving.worker.protocol import fail, progress

SOURCE_METHODS = ("import-gguf", "download")
# A model that learned anything scores far below this on its best domain (SmolLM2-135M: 3.8 on
# code, 25 on docs; a 5M-parameter model trained for minutes on the docs text: ~300 there);
# weights read wrongly score near the vocabulary size on every domain (thousands and more).
MAX_BASE_PERPLEXITY = 1000.0


def require(recipe: dict[str, Any]) -> None:
    if recipe["method"] == "import-gguf":
        from serving.worker import gguf_import

        gguf_import.require()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from serving.worker import perplexity

    recipe, output = spec["recipe"], Path(spec["output"])
    t0 = time.perf_counter()
    found = _prepare(recipe, output)
    if not (output / "config.json").is_file():
        fail(f"{spec['source']}: no config.json was written to {output}")
    evaluate = spec.get("evaluate")
    if evaluate:
        progress("evaluate")
        context, stride, texts = evaluate["context"], evaluate["stride"], evaluate.get("texts")
        base = perplexity.measure(output, context, stride, texts=texts)
        domain, best = min(
            ((d, m["perplexity"]) for d, m in base["domains"].items()), key=lambda p: p[1]
        )
        if not math.isfinite(best) or best > MAX_BASE_PERPLEXITY:
            fail(
                f"{spec['source']}: the prepared checkpoint's held-out perplexity is "
                f"{best:.1f} even on {domain}, its best domain (a working model scores below "
                f"{MAX_BASE_PERPLEXITY:.0f}): its weights were read wrongly; refused"
            )
        found["perplexity"] = {"base": base, "variant": None}
    found["total_s"] = round(time.perf_counter() - t0, 2)
    found["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    found["backend"] = recipe["backend"]
    return found


def _prepare(recipe: dict[str, Any], output: Path) -> dict[str, Any]:
    if recipe["method"] == "import-gguf":
        from serving.worker.gguf_import import import_gguf

        return import_gguf(Path(recipe["file"]), output)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # read by huggingface_hub at import
    from serving.worker.hub import fetch

    token_env = recipe.get("token_env") or "HF_TOKEN"
    return fetch(
        recipe["repo"], recipe.get("revision"), output, os.environ.get(token_env), token_env
    )
