"""Write random-weight Llama checkpoints of real shapes: bf16, GPTQ 4-bit, AWQ 4-bit.

    python3 make_models.py OUT_DIR [--size 8b|1b|tiny] [--formats bf16,gptq,awq] [--device cuda:0]

Weights are random, so answers are noise; shapes, formats and kernels are real. Each format
goes to OUT_DIR/<format>/ with a tokenizer trained here (nothing is downloaded) and a
``.complete`` marker written last: a folder with the marker is kept as it is. A lock per
format lets a second run (the experiment) wait for one already writing (started early by the
run_*.sh scripts, while the vLLM bundle unpacks).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SIZES = {  # hidden, intermediate, layers, heads, kv_heads, vocab
    "8b": (4096, 14336, 32, 32, 8, 128256),  # Llama-3.1-8B
    "1b": (2048, 8192, 16, 32, 8, 128256),  # Llama-3.2-1B
    "tiny": (512, 1536, 4, 8, 4, 32000),
}
GS = 128
SHARD_BYTES = 4e9


def write_tokenizer(out: Path) -> None:
    text = [
        " ".join(f"word{i % 997} token{i % 131} the of and to in" for i in range(j, j + 64))
        for j in range(2000)
    ]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text, trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": 4096,
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}assistant:",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def linear_shapes(h: int, i: int, nh: int, kv: int) -> dict[str, tuple[int, int]]:
    hd = h // nh
    return {
        "self_attn.q_proj": (nh * hd, h),
        "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h),
        "self_attn.o_proj": (h, nh * hd),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }


def config(size: str, fmt: str) -> dict[str, Any]:
    h, i, layers, nh, kv, vocab = SIZES[size]
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": nh,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "torch_dtype": "bfloat16" if fmt == "bf16" else "float16",
    }  # fmt: skip
    if fmt == "gptq":
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": GS,
                                      "desc_act": False, "sym": True, "checkpoint_format": "gptq"}  # fmt: skip
    if fmt == "awq":
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": GS,
                                      "zero_point": True, "version": "gemm"}  # fmt: skip
    return cfg


class Writer:
    def __init__(self, out: Path, fmt: str, device: str) -> None:
        self.out, self.fmt, self.device = out, fmt, device
        self.dtype = torch.bfloat16 if fmt == "bf16" else torch.float16
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.shards: list[tuple[str, list[str]]] = []
        self.current: dict[str, torch.Tensor] = {}

    def rnd(self, *shape: int, scale: float = 0.02) -> torch.Tensor:
        t = torch.randn(*shape, generator=self.gen, device=self.device, dtype=torch.float32)
        return (t * scale).to(self.dtype).cpu()

    def ints(self, *shape: int) -> torch.Tensor:
        t = torch.randint(-(2**31), 2**31 - 1, shape, generator=self.gen, device=self.device,
                          dtype=torch.int64)  # fmt: skip
        return t.to(torch.int32).cpu()

    def linear(self, prefix: str, o: int, k: int) -> None:
        c = self.current
        if self.fmt == "bf16":
            c[prefix + ".weight"] = self.rnd(o, k)
        elif self.fmt == "gptq":
            c[prefix + ".qweight"] = self.ints(k // 8, o)
            c[prefix + ".qzeros"] = torch.full((k // GS, o // 8), 0x77777777, dtype=torch.int32)
            c[prefix + ".scales"] = (torch.rand(k // GS, o) * 0.004 + 0.001).to(self.dtype)
            c[prefix + ".g_idx"] = (torch.arange(k) // GS).to(torch.int32)
        else:  # awq
            c[prefix + ".qweight"] = self.ints(k, o // 8)
            c[prefix + ".qzeros"] = self.ints(k // GS, o // 8)
            c[prefix + ".scales"] = (torch.rand(k // GS, o) * 0.004 + 0.001).to(self.dtype)

    def flush(self, force: bool = False) -> None:
        size = sum(t.numel() * t.element_size() for t in self.current.values())
        if self.current and (force or size > SHARD_BYTES):
            name = f"model-{len(self.shards) + 1:05d}.safetensors"
            save_file(self.current, str(self.out / name), metadata={"format": "pt"})
            self.shards.append((name, list(self.current)))
            self.current = {}

    def index(self) -> None:
        weight_map = {key: name for name, keys in self.shards for key in keys}
        index = {"metadata": {}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index))


def write(out: Path, size: str, fmt: str, device: str) -> None:
    h, i, layers, nh, kv, vocab = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    (out / "config.json").write_text(json.dumps(config(size, fmt)))
    w = Writer(out, fmt, device)
    w.current["model.embed_tokens.weight"] = w.rnd(vocab, h)
    w.current["lm_head.weight"] = w.rnd(vocab, h)
    w.current["model.norm.weight"] = torch.ones(h, dtype=w.dtype)
    for layer in range(layers):
        p = f"model.layers.{layer}."
        w.current[p + "input_layernorm.weight"] = torch.ones(h, dtype=w.dtype)
        w.current[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=w.dtype)
        for name, (o, k) in linear_shapes(h, i, nh, kv).items():
            w.linear(p + name, o, k)
        w.flush()
    w.flush(force=True)
    w.index()
    (out / ".complete").write_text("ok\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="8b", choices=SIZES)
    ap.add_argument("--formats", default="bf16,gptq,awq")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for fmt in a.formats.split(","):
        target = a.out / fmt
        t0 = time.perf_counter()
        with (a.out / f".{fmt}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run writing it: wait for it
            waited = round(time.perf_counter() - t0, 1)
            if (target / ".complete").is_file():
                print(json.dumps({"format": fmt, "path": str(target), "kept": True,
                                  "waited_s": waited}), flush=True)  # fmt: skip
                continue
            write(target, a.size, fmt, a.device)
        took = round(time.perf_counter() - t0, 1)
        print(json.dumps({"format": fmt, "path": str(target), "write_s": took}), flush=True)


if __name__ == "__main__":
    main()
