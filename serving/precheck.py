"""Checks of a build that need the disk, run before any work starts (no torch needed).

The manifest's validation already refused what is wrong in itself (an unknown method, bits the
method does not take). What needs the source checkpoint or the calibration data is checked
here, at submit time and by ``quantgate check`` / ``quantgate quantize``: the source is a model
folder, the group size divides every quantized layer's input features (read from
``config.json``), the calibration dataset exists and holds text. The worker checks again on the
loaded model and the full dataset, before it quantizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serving.errors import InvalidRecipe
from serving.manifest import Calibration, Variant
from serving.methods import family
from serving.sources import ModelSource, SourceKind

GGUF_MAGIC = b"GGUF"
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
TEXT_SUFFIXES = (".txt", ".jsonl")


def check_build(source: Path, variant: Variant) -> None:
    """Raise InvalidRecipe when the variant cannot be built from ``source`` as asked."""
    if not variant.needs_build:
        return
    config = _config(source)
    recipe = variant.recipe()
    if "gguf_type" in recipe:
        _check_gguf_blocks(config, recipe["gguf_type"])
        return
    shape = family(variant.method).group_shape(recipe)
    if shape is not None:
        _check_group_size(config, *shape)
    if "calibration" in recipe:
        check_dataset(variant.calibration or Calibration())


def check_source(origin: ModelSource) -> None:
    """Raise InvalidRecipe when a source cannot be prepared as it stands: a GGUF file that is
    missing or is no GGUF file. (A Hub repository is only known once asked for.)"""
    if origin.kind is SourceKind.FOLDER:
        assert origin.path is not None
        if not (origin.path / "config.json").is_file():
            what = "does not exist" if not origin.path.exists() else "has no config.json"
            raise InvalidRecipe(f"source {origin.path} {what}: no model to serve or build")
        return
    if origin.kind is not SourceKind.GGUF:
        return
    assert origin.path is not None
    try:
        with origin.path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InvalidRecipe(f"GGUF source {origin.path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise InvalidRecipe(f"GGUF source {origin.path} is not a GGUF file (starts {magic!r})")


def _config(source: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise InvalidRecipe(f"source {source} is not a model folder (no config.json)") from None
    except ValueError as exc:
        raise InvalidRecipe(f"source {source}/config.json is not JSON: {exc}") from None
    return data


def layer_inputs(config: dict[str, Any]) -> dict[str, int]:
    """Input features of a decoder layer's linear layers, for Llama-like configs ({} if unknown)."""
    text = config.get("text_config") or config
    try:
        hidden, inter = int(text["hidden_size"]), int(text["intermediate_size"])
        heads = int(text["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return {}
    head_dim = int(text.get("head_dim") or hidden // heads)
    attn = {name: hidden for name in ("q_proj", "k_proj", "v_proj")}
    mlp = {name: hidden for name in ("gate_proj", "up_proj")}
    return {**attn, "o_proj": heads * head_dim, **mlp, "down_proj": inter}


def _check_gguf_blocks(config: dict[str, Any], gguf_type: str) -> None:
    """llama.cpp's K types pack 256 weights of a row per block, the others 32; a row that is not
    a whole number of blocks gets another type, so the file would not be the type asked."""
    block = 256 if "_k" in gguf_type else 32
    odd = sorted(name for name, n in layer_inputs(config).items() if n % block)
    if odd:
        raise InvalidRecipe(
            f"gguf_type {gguf_type!r} packs rows in blocks of {block} weights, which does not "
            f"divide the input features of {', '.join(odd)}; llama.cpp would store them in "
            "another type: use q8_0 or q4_0 (blocks of 32)"
        )


def _check_group_size(config: dict[str, Any], group: int, ignore: list[str]) -> None:
    if group == -1:
        return
    bad = {
        name: size
        for name, size in layer_inputs(config).items()
        if size % group and not any(name in pattern for pattern in ignore)
    }
    if bad:
        layers = ", ".join(f"{name} ({size})" for name, size in bad.items())
        raise InvalidRecipe(
            f"group_size {group} does not divide the input features of {layers}; "
            "pick a divisor of them, -1 (per channel), or add those layers to ignore"
        )


def check_dataset(calib: Calibration) -> None:
    """The dataset exists and holds some text (the worker counts tokens)."""
    path = calib.dataset
    if path is None:
        return
    if not path.exists():
        raise InvalidRecipe(f"calibration dataset {path} does not exist")
    if path.is_dir() and any((path / m).is_file() for m in DATASETS_MARKERS):
        _check_splits(path, calib.split)
        return
    if path.is_file() and path.suffix not in TEXT_SUFFIXES:
        raise InvalidRecipe(
            f"calibration dataset {path}: use a .txt or .jsonl file, a folder of them, "
            "or a datasets save_to_disk folder"
        )
    if calib.split is not None:
        raise InvalidRecipe(f"calibration dataset {path} has no splits; drop split")
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    )
    if not any(_has_text(f, calib.text_field) for f in files):
        raise InvalidRecipe(f"calibration dataset {path} holds no text")


def _has_text(path: Path, field: str) -> bool:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                return True
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InvalidRecipe(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise InvalidRecipe(f"{path}:{n}: no string field {field!r}")
            if row[field].strip():
                return True
    return False


def _check_splits(path: Path, split: str | None) -> None:
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a single Dataset: no splits to check
    if (split or "train") not in splits:
        raise InvalidRecipe(
            f"calibration dataset {path} has no split {split or 'train'!r} ({', '.join(splits)})"
        )
