"""The llama.cpp backend: GGUF (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0).

Two steps, both llama.cpp's own code: its converter (``convert_hf_to_gguf.py``, taken from the
llama.cpp that llama-cpp-python vendors, with that llama.cpp's ``gguf-py``: newer than the
``gguf`` on PyPI of the same version number, and the converter needs it) writes the base model as an
F16 GGUF; its quantizer (``llama_model_quantize`` in libllama, called through llama-cpp-python)
turns that into the asked type, on every core. The F16 file is deleted after.

The output folder holds ``model.gguf`` plus the base's ``config.json`` and tokenizer files:
vLLM (with vllm-gguf-plugin) reads the model's config and tokenizer from there, and
transformers dequantizes the GGUF to measure its perplexity.

The converter names a BPE tokenizer's pre-tokenizer by the hash of how it splits a test text,
known only for published models. A tokenizer made by ``quantgate make-model`` (byte-level BPE
with GPT-2's split regex) is unknown there, so an unknown hash falls back to ``gpt-2`` when, and
only when, the tokenizer's pre-tokenizer is that one; any other unknown tokenizer fails the job
with the converter's reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.worker.protocol import GGUF_FILE, fail, progress

COPIED = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model",
)  # fmt: skip
# llama.cpp's llama_ftype values (include/llama.h).
FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
CONVERTER_ENV = "QUANTGATE_LLAMA_CPP_DIR"
INSTALL = (
    "the quantizer environment needs llama-cpp-python (built from source: CMake and a C++ "
    "compiler) and gguf, and llama.cpp's converter: `make gguf` (or pip install "
    "'llama-cpp-python==0.3.36' 'gguf==0.19.0' and set QUANTGATE_LLAMA_CPP_DIR to a llama.cpp "
    "checkout)"
)


def converter_dir() -> Path:
    """Where ``convert_hf_to_gguf.py`` and its ``conversion`` package are: the environment's
    ``share/llama.cpp`` (``make gguf`` puts them there) unless QUANTGATE_LLAMA_CPP_DIR says."""
    return Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix, "share", "llama.cpp"))


def require() -> None:
    """Fail now, before any work, when llama.cpp's converter or quantizer is missing. (The
    ``gguf`` package is not imported here: the converter must get its own, newer, copy.)"""
    missing = []
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or a libllama that does not load here
        missing.append(f"llama_cpp ({type(exc).__name__}: {exc})")
    if importlib.util.find_spec("gguf") is None:
        missing.append("gguf (transformers reads GGUF with it)")
    for part in ("convert_hf_to_gguf.py", "conversion", "gguf-py"):
        if not (converter_dir() / part).exists():
            missing.append(f"{part} (not in {converter_dir()})")
    if missing:
        fail(f"backend 'llamacpp' is not usable: missing {', '.join(missing)}; {INSTALL}")


def build(source: Path, output: Path, recipe: dict[str, Any]) -> dict[str, float]:
    """Convert and quantize ``source`` into ``output``; returns the timings."""
    gguf_type = recipe["gguf_type"]
    output.mkdir(parents=True, exist_ok=True)
    f16 = output / "model-f16.gguf"
    t0 = time.perf_counter()
    progress("convert", to="f16")
    convert(source, f16)
    t1 = time.perf_counter()
    progress("quantize", gguf_type=gguf_type)
    quantize(f16, output / GGUF_FILE, gguf_type)
    f16.unlink()
    t2 = time.perf_counter()
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, output / name)
    progress("save")
    return {"convert_s": t1 - t0, "quantize_s": t2 - t1}


def convert(source: Path, out: Path) -> None:
    """llama.cpp's converter, in this process, as its command line would run it."""
    with _converter() as module:
        argv = sys.argv
        sys.argv = ["convert_hf_to_gguf.py", str(source), "--outfile", str(out), "--outtype", "f16"]
        try:
            module.main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                fail(f"llama.cpp's converter stopped (exit {exc.code}); see the log above")
        except NotImplementedError as exc:
            fail(f"llama.cpp's converter cannot convert {source}: {exc}")
        finally:
            sys.argv = argv


def quantize(f16: Path, out: Path, gguf_type: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[gguf_type]
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(
        str(f16).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        fail(f"llama.cpp's quantizer failed ({gguf_type}, status {status}); see the log above")


@contextlib.contextmanager
def _converter() -> Iterator[Any]:
    """The converter module, with the pre-tokenizer fallback described in the module text."""
    where = str(converter_dir())
    sys.path.insert(0, where)
    try:
        import convert_hf_to_gguf
        from conversion import base

        original = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
            try:
                name: str = original(self, tokenizer)
            except NotImplementedError:
                if not _gpt2_split(Path(self.dir_model) / "tokenizer.json"):
                    raise
                return "gpt-2"
            return name

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
        try:
            yield convert_hf_to_gguf
        finally:
            base.TextModel.get_vocab_base_pre = original
    finally:
        sys.path.remove(where)


def _gpt2_split(tokenizer_json: Path) -> bool:
    """Whether the tokenizer splits text as GPT-2 does: byte-level, with its regex."""
    try:
        pre = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return False
    return bool(pre.get("type") == "ByteLevel" and pre.get("use_regex", True))
