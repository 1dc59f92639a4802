"""Perplexity on held-out text of several domains, none of it used to train or calibrate:

- ``docs``: the built-in corpus's held-out split (CPython docstrings; the default calibration
  set is the other 90 %), its first ``DOCS_TOKENS`` tokens;
- ``prose``: general English prose (``serving/data/eval/prose.txt``);
- ``chat``: conversations rendered with the model's own chat template
  (``serving/data/eval/chat.jsonl``; plain ``User:``/``Assistant:`` turns without a template);
- ``code``: Python code (``serving/data/eval/code.jsonl``);
- a manifest's own texts (``serving.evaluation``): one domain each, beside the built-in ones
  or instead of them.

The prose, chat and code texts were written for Quantgate (see ``serving/data/README.md``).
Each domain is scored on its own, strided: windows of ``context`` tokens, each scoring only the
tokens the previous window did not, so every token but the first is scored once with up to
``context - stride`` tokens of history. The result holds each domain's perplexity and the
pooled one; the quality gate reads the worst domain's increase (``serving.build``).

    python -m serving.worker.perplexity MODEL_DIR [--context 256] [--stride 128] [--texts JSON]
        [--served URL --served-model NAME]

prints ``QUANTGATE_RESULT {"perplexity": ..., "tokens": ..., "domains": {...}}``. Quantized
checkpoints (compressed-tensors) load through transformers, which applies their weight and
activation quantization in the forward pass; evaluation runs in float32 on the CPU (the
device's dtype on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from serving.worker.corpus import paragraphs
from serving.worker.protocol import GGUF_FILE, progress, result

EVAL_DIR = Path(__file__).resolve().parent.parent / "data" / "eval"
DOMAINS = ("docs", "prose", "chat", "code")
DOCS_TOKENS = 4096  # of the built-in held-out split: bounded, so a measure takes seconds


def domain_ids(tok: PreTrainedTokenizerBase, domain: str) -> torch.Tensor:
    """The token stream of one built-in evaluation domain (documents joined with EOS)."""
    if domain == "chat":
        texts = [_conversation(tok, row["messages"]) for row in _jsonl("chat.jsonl")]
    elif domain == "code":
        texts = [row["text"] for row in _jsonl("code.jsonl")]
    elif domain == "prose":
        lines = (EVAL_DIR / "prose.txt").read_text(encoding="utf-8").splitlines()
        texts = [line for line in lines if line.strip()]
    else:
        texts = paragraphs("heldout")
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids += enc if domain == "chat" else [*enc, tok.eos_token_id]
    return torch.tensor(ids[:DOCS_TOKENS] if domain == "docs" else ids, dtype=torch.long)


def text_ids(tok: PreTrainedTokenizerBase, text: dict[str, Any]) -> torch.Tensor:
    """The token stream of a manifest's own evaluation text (``serving.evaluation.EvalText``):
    a .txt file's non-empty lines, or a .jsonl file's rows (``messages`` rendered with the chat
    template, else the ``text_field`` string), each a document."""
    path = Path(text["path"])
    ids: list[int] = []
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        docs = [(line, False) for line in lines if line.strip()]
    else:
        rows = _jsonl(path)
        docs = [(_conversation(tok, r["messages"]), True) if "messages" in r
                else (str(r[text["text_field"]]), False) for r in rows]  # fmt: skip
    for doc, templated in docs:
        enc = tok(doc, add_special_tokens=False)["input_ids"]
        ids += enc if templated else [*enc, tok.eos_token_id]
    limit = text.get("max_tokens")
    return torch.tensor(ids[:limit] if limit else ids, dtype=torch.long)


def _jsonl(name: str | Path) -> list[dict[str, Any]]:
    lines = (EVAL_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _conversation(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    if tok.chat_template:
        text: str = tok.apply_chat_template(messages, tokenize=False)
        return text
    turns = (f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return "\n".join(turns) + (tok.eos_token or "")


def perplexity(
    score: Scorer,
    tok: PreTrainedTokenizerBase,
    context: int,
    stride: int,
    texts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Each domain's perplexity and the pooled one: the built-in domains (unless ``texts`` says
    ``builtin: false``) and ``texts``' own."""
    streams: dict[str, Callable[[], torch.Tensor]] = {}
    if texts is None or texts["builtin"]:
        streams |= {d: partial(domain_ids, tok, d) for d in DOMAINS}
    for text in (texts or {}).get("texts", []):
        streams[text["name"]] = partial(text_ids, tok, text)
    domains: dict[str, dict[str, Any]] = {}
    total_nll, total_scored = 0.0, 0
    with torch.no_grad():
        for i, (domain, ids) in enumerate(streams.items()):
            progress("evaluate", domain=domain, domains_done=i, domains_total=len(streams))
            nll, scored = _strided_nll(score, ids(), context, stride)
            domains[domain] = {"perplexity": round(math.exp(nll / scored), 4), "tokens": scored}
            total_nll, total_scored = total_nll + nll, total_scored + scored
    return {
        "perplexity": round(math.exp(total_nll / total_scored), 4),
        "tokens": total_scored,
        "context": context,
        "stride": stride,
        "domains": domains,
        "text": "held-out: " + ", ".join(streams),
    }


# (window token ids, how many of its last tokens to score) -> (their summed NLL, how many)
Scorer = Callable[[torch.Tensor, int], tuple[float, int]]


def _strided_nll(score: Scorer, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + context, len(ids))
        window_nll, count = score(ids[begin:end], end - prev_end)  # the rest: scored before
        nll, scored, prev_end = nll + window_nll, scored + count, end
        if end == len(ids):
            break
    return nll, scored


def forward_scorer(model: Any) -> Scorer:
    """Scores windows with a model in this process (the offline measure)."""
    device = next(model.parameters()).device

    def score(ids: torch.Tensor, last: int) -> tuple[float, int]:
        window = ids.unsqueeze(0).to(device)
        labels = window.clone()
        labels[:, :-last] = -100
        count = int((labels[:, 1:] != -100).sum())
        return float(model(input_ids=window, labels=labels).loss) * count, count

    return score


def load(model_dir: Path) -> Any:
    """The checkpoint in ``model_dir``; a GGUF file there is dequantized by transformers (the
    weights llama.cpp's kernels would compute with, in float)."""
    device = "cuda" if torch.cuda.is_available() else None
    dtype = "auto" if device else torch.float32  # bf16 matmuls are slow on CPUs without AMX
    extra = {"gguf_file": GGUF_FILE} if (model_dir / GGUF_FILE).is_file() else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, device_map=device, **extra
    )
    return model.eval()


def measure(
    model_dir: Path,
    context: int,
    stride: int,
    model: Any = None,
    tokenizer_dir: Path | None = None,
    texts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Perplexity of the checkpoint in ``model_dir`` (or of ``model``, already in memory); the
    tokenizer is ``model_dir``'s, else ``tokenizer_dir``'s; ``texts``: a manifest's own."""
    t0 = time.perf_counter()
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file() or tokenizer_dir is None
    tok = AutoTokenizer.from_pretrained(str(model_dir if has_tokenizer else tokenizer_dir))
    scorer = forward_scorer(model if model is not None else load(model_dir))
    found = perplexity(scorer, tok, context, stride, texts)
    return {**found, "seconds": round(time.perf_counter() - t0, 2)}


def measure_served(
    url: str,
    model: str,
    tokenizer_dir: Path,
    context: int,
    stride: int,
    texts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The same measure, each window scored by the vLLM server at ``url`` (``served``)."""
    from serving.worker.served import served_scorer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    found = perplexity(served_scorer(url, model), tok, context, stride, texts)
    return {**found, "served": url, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="perplexity", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--texts", help='JSON: {"builtin": bool, "texts": [{"name", "path", ...}]}')
    ap.add_argument(
        "--served", metavar="URL", help="score through this vLLM server (MODEL_DIR: its tokenizer)"
    )
    ap.add_argument("--served-model", help="the model name the server serves (with --served)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    texts = json.loads(args.texts) if args.texts else None
    if args.served:
        result(measure_served(args.served, args.served_model, args.model_dir, args.context,
                              args.stride, texts))  # fmt: skip
        return
    result(measure(args.model_dir, args.context, args.stride, texts=texts))


if __name__ == "__main__":
    main()
