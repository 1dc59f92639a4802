"""Build a small Llama model here, with no downloads: a BPE tokenizer and a chat template trained
on the built-in corpus, random weights, then optionally a few minutes of training on that text.

Run in the quantizer environment (torch, transformers, tokenizers):
    python -m serving.worker.make_model OUT_DIR [--train-steps N] [--hidden 256] ...
Prints one JSON line of results last. Writes into a temporary folder and renames it into place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from serving.worker.corpus import paragraphs

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<pad>"]


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast


def token_stream(tok: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def train(model: LlamaForCausalLM, data: torch.Tensor, steps: int, seq: int, batch: int) -> float:
    """Plain next-token training with AdamW and a cosine schedule; returns the last loss."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.detach().item()
        if step % 25 == 0 or step == steps - 1:
            print(f"train step {step + 1}/{steps} loss {loss_value:.3f}", flush=True)
    model.eval()
    return loss_value


def make(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    texts = paragraphs("train")
    tok = build_tokenizer(texts, args.vocab)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    loss = float("nan")
    if args.train_steps > 0:
        loss = train(model, token_stream(tok, texts), args.train_steps, args.seq, args.batch)
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.to(torch.bfloat16).save_pretrained(staging)
        tok.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "train_steps": args.train_steps,
        "final_loss": round(loss, 4) if not math.isnan(loss) else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="make_model", description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = make(parse(sys.argv[1:] if argv is None else argv))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
