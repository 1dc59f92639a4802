"""Calibration text and the token windows made from it.

A dataset is a ``.txt`` file (one text per line), a ``.jsonl`` file (one object per line,
text under ``text_field``), a folder of such files, a ``datasets`` ``save_to_disk`` folder
(``split`` picks one of a DatasetDict), or unset: the built-in corpus's train split. The texts
are tokenized, joined with EOS, and ``samples`` windows of ``max_seq_length`` tokens are cut at
seeded random offsets.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from serving.worker.corpus import paragraphs
from serving.worker.protocol import fail

DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def texts(calib: dict[str, Any]) -> list[str]:
    dataset = calib["dataset"]
    if dataset is None:
        return paragraphs("train")
    path = Path(dataset)
    if not path.exists():
        fail(f"calibration dataset {path} does not exist")
    if path.is_dir() and any((path / m).is_file() for m in DATASETS_MARKERS):
        found = _saved_dataset(path, calib["split"], calib["text_field"])
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        found = [t for f in (files if path.is_dir() else [path]) for t in _file(f, calib)]
    if not found:
        fail(f"calibration dataset {path} holds no text")
    return found


def _file(path: Path, calib: dict[str, Any]) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(calib["text_field"]), str):
                fail(f"{path}:{n}: no string field {calib['text_field']!r}")
            out.append(row[calib["text_field"]])
    return [t for t in out if t.strip()]


def _saved_dataset(path: Path, split: str | None, field: str) -> list[str]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        name = split or "train"
        if name not in data:
            fail(f"calibration dataset {path} has no split {name!r} ({', '.join(data)})")
        data = data[name]
    if field not in data.column_names:
        fail(f"calibration dataset {path} has no column {field!r} ({data.column_names})")
    return [t for t in data[field] if isinstance(t, str) and t.strip()]


def windows(tok: PreTrainedTokenizerBase, calib: dict[str, Any]) -> list[list[int]]:
    """``samples`` windows of ``max_seq_length`` tokens, at seeded random offsets."""
    ids: list[int] = []
    for enc in tok(texts(calib), add_special_tokens=False)["input_ids"]:
        ids += [*enc, tok.eos_token_id]
    seq, samples = calib["max_seq_length"], calib["samples"]
    if len(ids) < seq + 1:
        fail(f"calibration text has {len(ids)} tokens, fewer than max_seq_length {seq}")
    rng = random.Random(calib["seed"])
    return [ids[s : s + seq] for s in (rng.randrange(0, len(ids) - seq) for _ in range(samples))]
