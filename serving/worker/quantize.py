"""Build one variant, as its own process in the quantizer environment, then measure it.

    python -m serving.worker.quantize SPEC.json

SPEC holds ``source``, ``output``, ``recipe`` (see ``serving.manifest.Variant.recipe``; a
source's recipe, ``serving.sources.ModelSource.recipe``, imports or downloads it instead:
``serving.worker.source``) and
``evaluate`` (``{"context", "stride", "base", "texts"}``, or null to skip the quality measurement).
Order of work, cheapest checks first: the backend's library imports; the calibration text
loads and is long enough; the model loads and the group size divides its layers; then
quantization, saving, and the held-out perplexity of the variant (and of the base when asked).
Progress and the result go to stdout (``serving.worker.protocol``). The output folder is
written by this process and nothing else; the caller renames it into place after a clean exit.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from serving.worker import source
from serving.worker.legacy import require
from serving.worker.protocol import fail, progress, result

LIBRARIES = (
    "llmcompressor", "autoawq", "compressed-tensors", "llama-cpp-python", "gguf", "bitsandbytes",
    "torch", "transformers",
)  # fmt: skip
HF_QUANTIZERS = ("bitsandbytes", "torchao")  # through transformers: serving.worker.hf_quantizers


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from serving.worker import calibration, perplexity

    source, output, recipe = Path(spec["source"]), Path(spec["output"]), spec["recipe"]
    t0 = time.perf_counter()
    progress("prepare", source=str(source))
    tok = AutoTokenizer.from_pretrained(str(source))
    rows = calibration.windows(tok, recipe["calibration"]) if "calibration" in recipe else None
    if recipe.get("backend") == "transformers":  # bitsandbytes int8, torchao int4
        from serving.worker import hf_quantizers

        progress("quantize", method=recipe["method"])
        in_memory, timings = hf_quantizers.build(source, output, recipe), {}
        timings["quantize_s"] = time.perf_counter() - t0
    elif "backend" not in recipe:  # measured only (serving.manifest.writes_weights)
        progress("quantize", at_load=recipe["method"])
        output.mkdir(parents=True, exist_ok=True)  # the report only: vLLM reads the base's files
        in_memory, timings = _measured_model(source, spec.get("served")), {}
        timings["load_s"] = time.perf_counter() - t0
    elif recipe["backend"] == "llamacpp":
        from serving.worker import gguf

        in_memory, timings = None, gguf.build(source, output, recipe)
    elif recipe["backend"] == "autoawq":
        from serving.worker.legacy import build_autoawq

        if rows is None:
            fail("backend 'autoawq' needs calibration")
        in_memory, timings = build_autoawq(source, output, recipe, rows, tok)
    else:
        from serving.worker.compressor import build

        in_memory, timings = build(source, output, recipe, rows, tok)
    found: dict[str, Any] = {**{k: round(v, 2) for k, v in timings.items()}}
    if torch.cuda.is_available():  # the most the build held at once (calibration caches...)
        found["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"peak GPU memory allocated while building: {found['peak_gpu_gib']} GiB", flush=True)
    evaluate = spec.get("evaluate")
    if evaluate:
        progress("evaluate")
        context, stride, texts = evaluate["context"], evaluate["stride"], evaluate.get("texts")
        served = spec.get("served")
        found["perplexity"] = {
            "variant": perplexity.measure(output, context, stride, in_memory, source, texts)
            if not served
            else perplexity.measure_served(
                served["url"], served["model"], source, context, stride, texts
            ),
            "base": perplexity.measure(source, context, stride, texts=texts)
            if evaluate["base"]
            else None,
        }
    found["total_s"] = round(time.perf_counter() - t0, 2)
    found["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    found["backend"] = recipe.get("backend", "vllm at load")
    found["libraries"] = _versions()
    return found


def _measured_model(source: Path, served: dict[str, str] | None) -> Any:
    """What a measure-only job measures: the vLLM server named (None here: it is asked per
    window), else the base loaded through transformers with the method's quantization."""
    if served:
        return None
    from serving.worker import hf_quantizers

    return hf_quantizers.load(source)


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m serving.worker.quantize SPEC.json")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    recipe = spec["recipe"]
    if recipe["method"] in source.SOURCE_METHODS:  # a GGUF import or a Hub download
        source.require(recipe)
        result(source.run(spec))
        return
    if not Path(spec["source"], "config.json").is_file():
        fail(f"source {spec['source']} is not a model folder (no config.json)")
    if recipe["method"] in HF_QUANTIZERS:
        from serving.worker import hf_quantizers

        hf_quantizers.require(recipe["method"])
    elif "backend" not in recipe:  # measured through the vLLM server serving it (FP8)
        if not spec.get("served"):
            fail(f"method {recipe['method']!r} is measured through a vLLM server; none named")
    elif recipe["backend"] == "llamacpp":
        from serving.worker import gguf

        gguf.require()
    else:
        require(recipe["backend"])
    result(run(spec))


if __name__ == "__main__":
    main()
