"""The perplexity of what vLLM serves, against the offline measure, on one GPU.

    python3 benchmarks/gpu/served_quality.py --work /tmp/qsq --out OUT [--set nf4]

On the small demo model (trained here by make-model): ``quantgate doctor``; a GPTQ W4A16 g64
variant built by ``quantgate quantize`` (its report holds the offline perplexity of the variant
and of the base, transformers on the GPU); then vLLM serving the base, the GPTQ variant, the
base quantized to FP8 at load and (where bitsandbytes imports) to NF4 at load, each measured
through its own prompt logprobs over the same windows (``serving.worker.served``). Writes
OUT/served_quality.json and prints it.

``--set nf4``: bitsandbytes NF4 both ways instead: the measure job Quantgate runs before it
serves NF4 (the base quantized by transformers' bitsandbytes integration, measured offline),
against vLLM quantizing the same base to NF4 at load, measured through it. Needs bitsandbytes
importable (``pip install --target /tmp/wheels`` a wheel, on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_proc  # noqa: E402

PORT = 8011
VLLM_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True,
                              env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip
    with log.open("a") as f:
        f.write("\n--- stdout ---\n" + done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({done.returncode}); see {log}")
    return done.stdout


def result_of(stdout: str) -> dict[str, Any]:
    line = next(x for x in reversed(stdout.splitlines()) if x.startswith("QUANTGATE_RESULT "))
    found: dict[str, Any] = json.loads(line.removeprefix("QUANTGATE_RESULT "))
    return found


def serve(model_dir: Path, log: Path, quantization: str | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "m", "--port", str(PORT), "--max-model-len", "512",
           "--gpu-memory-utilization", "0.3", "--enforce-eager",
           "--attention-backend", "TRITON_ATTN"]  # fmt: skip
    if quantization:
        cmd += ["--quantization", quantization]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **VLLM_ENV})  # fmt: skip
    vllm_proc.wait_healthy(proc, PORT, log, 300)
    return proc


def served(
    model_dir: Path, tokenizer: Path, out: Path, name: str, quant: str | None
) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = serve(model_dir, out / f"vllm-{name}.log", quant)
    ready = time.monotonic() - t0
    try:
        stdout = run([sys.executable, "-m", "serving.worker.perplexity", str(tokenizer),
                      "--served", f"http://127.0.0.1:{PORT}", "--served-model", "m"],
                     out / f"served-{name}.log")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
    return {**result_of(stdout), "vllm_ready_s": round(ready, 1)}


def nf4_offline(tiny: Path, work: Path, out: Path) -> dict[str, Any]:
    """The measure job's own worker on a bitsandbytes NF4 recipe: base and NF4, offline."""
    spec = work / "nf4-spec.json"
    spec.write_text(json.dumps({
        "source": str(tiny), "output": str(work / "nf4"), "recipe": {"method": "bitsandbytes"},
        "evaluate": {"context": 256, "stride": 128, "base": True},
    }))  # fmt: skip
    found = result_of(run([sys.executable, "-m", "serving.worker.quantize", str(spec)],
                          out / "nf4-offline.log"))  # fmt: skip
    return {"base": found["perplexity"]["base"], "nf4": found["perplexity"]["variant"]}


def agreement(offline: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for name, off in offline.items():
        on = served.get(name, {})
        if off and "perplexity" in on:
            rows[name] = {"offline": off["perplexity"], "served": on["perplexity"],
                          "difference": round(on["perplexity"] / off["perplexity"] - 1, 5)}  # fmt: skip
    return rows


def main_nf4(work: Path, out: Path, tiny: Path) -> int:
    found: dict[str, Any] = {"offline": nf4_offline(tiny, work, out), "served": {}}
    for name, quant in (("base", None), ("nf4", "bitsandbytes")):
        try:
            found["served"][name] = served(tiny, tiny, out, name, quant)
        except SystemExit as exc:
            found["served"][name] = {"error": str(exc)}
    found["agreement"] = agreement(found["offline"], found["served"])
    (out / "served_quality_nf4.json").write_text(json.dumps(found, indent=2))
    print(json.dumps(found["agreement"], indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qsq"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/qg-out"))
    ap.add_argument("--set", choices=["all", "nf4"], default="all")
    args = ap.parse_args()
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    qenv = {"PYTHONPATH": f"{os.environ.get('QUANTIZER_PYTHONPATH', '')}:{ROOT}"}
    tiny = work / "tiny"
    if args.set == "nf4":
        if not (tiny / "config.json").is_file():
            run([sys.executable, "-m", "serving.worker.make_model", str(tiny), "--train-steps",
                 "300"], out / "make_model.log", {"PYTHONPATH": f"{os.environ.get('PYTHONPATH', '')}:{ROOT}"})  # fmt: skip
        return main_nf4(work, out, tiny)
    found: dict[str, Any] = {}
    doctor = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor"], capture_output=True,
                            text=True, cwd=ROOT)  # fmt: skip
    found["doctor"] = {"rc": doctor.returncode, "report": doctor.stdout + doctor.stderr[-2000:]}
    if not (tiny / "config.json").is_file():
        run([sys.executable, "-m", "serving.worker.make_model", str(tiny), "--train-steps", "300"],
            out / "make_model.log", qenv)  # fmt: skip
    gptq = work / "gptq"
    if not (gptq / "report.json").is_file():
        run([sys.executable, "-m", "gateway.cli", "quantize", "--model-path", str(tiny),
             "--output-dir", str(gptq), "--method", "gptq", "--bits", "4", "--group-size", "64",
             "--calibration-samples", "32"], out / "quantize.log")  # fmt: skip
    report = json.loads((gptq / "report.json").read_text())
    found["offline"] = {"base": report["perplexity"]["base"],
                        "gptq-w4a16": report["perplexity"]["variant"]}  # fmt: skip
    found["served"] = {}
    for name, model_dir, quant in (("base", tiny, None), ("gptq-w4a16", gptq, None),
                                   ("fp8", tiny, "fp8"), ("nf4", tiny, "bitsandbytes")):  # fmt: skip
        try:
            found["served"][name] = served(model_dir, tiny, out, name, quant)
        except SystemExit as exc:
            found["served"][name] = {"error": str(exc)}
        (out / "served_quality.json").write_text(json.dumps(found, indent=2))
    for name in ("base", "gptq-w4a16"):
        off, on = found["offline"][name], found["served"].get(name, {})
        if "perplexity" in on and off:
            found.setdefault("agreement", {})[name] = {
                "offline": off["perplexity"], "served": on["perplexity"],
                "difference": round(on["perplexity"] / off["perplexity"] - 1, 5),
            }  # fmt: skip
    (out / "served_quality.json").write_text(json.dumps(found, indent=2))
    print(json.dumps({k: v for k, v in found.items() if k != "doctor"}, indent=2))
    print(found["doctor"]["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
