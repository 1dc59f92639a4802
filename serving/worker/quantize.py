"""Quantize one checkpoint with llm-compressor, as its own process in the quantizer environment.

    python -m serving.worker.quantize SPEC.json

SPEC holds ``source``, ``output`` and ``recipe`` (see ``serving.manifest.Variant.recipe``).
Progress goes to stdout as ``QUANTGATE_PROGRESS {json}`` lines; the last line is
``QUANTGATE_RESULT {json}`` with timings and library versions. The output folder is written
by this process and nothing else; the caller renames it into place only after a clean exit.
"""

from __future__ import annotations

import json
import random
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from serving.worker.corpus import paragraphs


def progress(stage: str, **fields: Any) -> None:
    print("QUANTGATE_PROGRESS " + json.dumps({"stage": stage, **fields}), flush=True)


def calibration_texts(dataset: str | None) -> list[str]:
    if dataset is None:
        return paragraphs("train")
    path = Path(dataset)
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if path.is_dir()
        else [path]
    )
    texts: list[str] = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        if f.suffix == ".jsonl":
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
        else:
            texts += [line for line in lines if line.strip()]
    return texts


def calibration_set(tok: PreTrainedTokenizerBase, calib: dict[str, Any]) -> Dataset:
    """``samples`` windows of ``max_seq_length`` tokens from the text, at seeded random offsets."""
    texts = calibration_texts(calib["dataset"])
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids += [*enc, tok.eos_token_id]
    seq, samples = calib["max_seq_length"], calib["samples"]
    if len(ids) < seq + 1:
        raise SystemExit(f"calibration text has {len(ids)} tokens, fewer than max_seq_length {seq}")
    rng = random.Random(calib["seed"])
    starts = [rng.randrange(0, len(ids) - seq) for _ in range(samples)]
    rows = [ids[s : s + seq] for s in starts]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seq for _ in rows]})


def modifiers(recipe: dict[str, Any]) -> list[Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

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
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)
    groups = {"group_0": scheme}
    if recipe["method"] == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(config_groups=groups, ignore=recipe["ignore"])]
    if recipe["method"] == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        allow_cpu_awq()
        return [AWQModifier(config_groups=groups, ignore=recipe["ignore"])]
    raise SystemExit(f"unknown method {recipe['method']!r}")


def allow_cpu_awq() -> None:
    """llm-compressor 0.14's AWQ pins host memory, which fails with no accelerator:
    'Cannot access accelerator device when none is available.' Pinning only speeds up
    host-to-device copies, so on a CPU-only machine it is skipped."""
    if torch.cuda.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *a, **k: None


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from llmcompressor import oneshot

    recipe, calib = spec["recipe"], spec["recipe"]["calibration"]
    t0 = time.perf_counter()
    progress("load", source=spec["source"])
    device = "cuda" if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype="auto", device_map=device)
    tok = AutoTokenizer.from_pretrained(spec["source"])
    dataset = calibration_set(tok, calib)
    t_load = time.perf_counter() - t0
    progress("calibrate", samples=calib["samples"], max_seq_length=calib["max_seq_length"])
    t1 = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=modifiers(recipe),
        max_seq_length=calib["max_seq_length"],
        num_calibration_samples=calib["samples"],
    )
    t_quant = time.perf_counter() - t1
    progress("save", output=spec["output"])
    model.save_pretrained(spec["output"], save_compressed=True)
    tok.save_pretrained(spec["output"])
    return {
        "load_s": round(t_load, 2),
        "quantize_s": round(t_quant, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "device": "cuda" if device else "cpu",
        "libraries": {
            name: version(name)
            for name in ("llmcompressor", "compressed-tensors", "torch", "transformers")
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m serving.worker.quantize SPEC.json")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    if not Path(spec["source"], "config.json").is_file():
        raise SystemExit(f"source {spec['source']} is not a model folder (no config.json)")
    result = run(spec)
    print("QUANTGATE_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
