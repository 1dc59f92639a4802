"""The built-in text: train split for training and calibration, held-out split for perplexity."""

from __future__ import annotations

import gzip
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus.txt.gz"
HELD_OUT_FRACTION = 0.1


def paragraphs(split: str = "train", path: Path = CORPUS) -> list[str]:
    """Paragraphs of the built-in corpus; ``train`` is the first 90 %, ``heldout`` the rest."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    cut = int(len(lines) * (1 - HELD_OUT_FRACTION))
    if split == "train":
        return lines[:cut]
    if split == "heldout":
        return lines[cut:]
    raise ValueError(f"unknown split {split!r}: use 'train' or 'heldout'")
