"""Calibration text and the token windows made from it.

A dataset is a ``.txt`` file (one text per line), a ``.jsonl`` file (one object per line,
text under ``text_field``), a folder of such files, a ``datasets`` ``save_to_disk`` folder
(``split`` picks one of a DatasetDict), or unset (below). The texts
are tokenized, joined with EOS, and ``samples`` windows of ``max_seq_length`` tokens are cut at
seeded random offsets. Unset, the built-in mix: a third each of the corpus's train split as
prose, the same paragraphs as chat turns in the model's own template, and Python code.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from serving.worker.corpus import paragraphs
from serving.worker.protocol import fail

CODE = Path(__file__).resolve().parent.parent / "data" / "code.txt.gz"
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
    """``samples`` windows of ``max_seq_length`` tokens, at seeded random offsets; without a
    dataset, an equal share from each part of the built-in mix (``builtin_streams``)."""
    seq, samples, rng = calib["max_seq_length"], calib["samples"], random.Random(calib["seed"])
    if calib["dataset"] is not None:
        return _cut(_stream(tok, texts(calib)), seq, samples, rng)
    streams = builtin_streams(tok)
    shares = [samples // len(streams) + (i < samples % len(streams)) for i in range(len(streams))]
    return [w for ids, n in zip(streams, shares, strict=True) for w in _cut(ids, seq, n, rng)]


def builtin_streams(tok: PreTrainedTokenizerBase) -> list[list[int]]:
    """The built-in calibration mix, none of it held out for evaluation: the corpus's train
    split as prose, the same paragraphs as chat turns in the model's own template (one
    paragraph asked about, the next one answering), and Python code (``data/code.txt.gz``)."""
    docs = paragraphs("train")
    pairs = zip(docs[::2], docs[1::2], strict=False)  # an odd last paragraph asks nothing
    chats = [_chat(tok, question, answer) for question, answer in pairs]
    with gzip.open(CODE, "rt", encoding="utf-8") as f:
        code = [json.loads(line) for line in f if line.strip()]
    return [_stream(tok, docs), _stream(tok, chats, eos=False), _stream(tok, code)]


def _chat(tok: PreTrainedTokenizerBase, question: str, answer: str) -> str:
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if tok.chat_template:
        text: str = tok.apply_chat_template(turns, tokenize=False)
        return text
    return f"User: {question}\nAssistant: {answer}{tok.eos_token or ''}"


def _stream(tok: PreTrainedTokenizerBase, parts: list[str], eos: bool = True) -> list[int]:
    ids: list[int] = []
    for enc in tok(parts, add_special_tokens=False)["input_ids"]:
        ids += [*enc, tok.eos_token_id] if eos else enc
    return ids


def _cut(ids: list[int], seq: int, samples: int, rng: random.Random) -> list[list[int]]:
    if len(ids) < seq + 1:
        fail(f"calibration text has {len(ids)} tokens, fewer than max_seq_length {seq}")
    return [ids[s : s + seq] for s in (rng.randrange(0, len(ids) - seq) for _ in range(samples))]
