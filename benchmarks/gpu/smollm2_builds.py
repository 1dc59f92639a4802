"""SmolLM2-135M-Instruct variants built on one GPU: AWQ's bounded grid search both ways, and
AutoRound (too slow for the table's 2-core CPU).

    python3 benchmarks/gpu/smollm2_builds.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --work /tmp/qsmol --out OUT [--only awq-512x2048-all,awq-512x2048-bounded,...]

Each build is one ``quantgate quantize`` of the model imported once from its GGUF file (the
import is cached under --work), W4A16 group 64 asymmetric (what fits SmolLM2's 576-wide layers):

- ``awq-512x2048-all`` / ``-bounded``: AWQ at 512 x 2048 calibration tokens, the grid search's
  loss over every token (``QUANTGATE_AWQ_LOSS_TOKENS=0``: llm-compressor's own behaviour) and
  over the worker's default bound (the first 65,536 tokens);
- ``autoround-s0`` / ``-s1``: AutoRound at the quality table's calibration (64 x 256, seeds 0
  and 1), with ``rtn`` and ``gptq-s0`` built beside it on the same GPU for reference.

Each report holds the perplexity of base and variant on the held-out domains (measured on the
GPU) and the quantization time. Writes OUT/smollm2_builds.json after each build and prints a
table. The 8B-shape timing of the AWQ job is benchmarks/gpu/calibration.py (``--methods awq``).
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
W4 = ["--bits", "4", "--group-size", "64", "--no-symmetric"]
TABLE = ["--calibration-samples", "64", "--max-seq-length", "256"]
BIG = ["--calibration-samples", "512", "--max-seq-length", "2048"]
EVERY = {"QUANTGATE_AWQ_LOSS_TOKENS": "0"}
BUILDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "awq-512x2048-all": (["--method", "awq", *W4, *BIG], EVERY),
    "awq-512x2048-bounded": (["--method", "awq", *W4, *BIG], {}),
    "rtn": (["--method", "rtn", *W4], {}),
    "gptq-s0": (["--method", "gptq", *W4, *TABLE, "--seed", "0"], {}),
    "autoround-s0": (["--method", "autoround", *W4, *TABLE, "--seed", "0"], {}),
    "autoround-s1": (["--method", "autoround", *W4, *TABLE, "--seed", "1"], {}),
}


def build(gguf: Path, work: Path, out: Path, name: str) -> dict[str, Any]:
    flags, env = BUILDS[name]
    folder = work / name
    t0 = time.time()
    if not (folder / "report.json").is_file():
        cmd = [sys.executable, "-m", "gateway.cli", "quantize", "--model-path", str(gguf),
               "--cache-dir", str(work / "cache"), "--output-dir", str(folder), *flags,
               "--log", str(out / f"{name}.log")]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            return {"build": name, "error": done.stdout[-1500:] + done.stderr[-1500:],
                    "wall_s": round(time.time() - t0, 1)}  # fmt: skip
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    ppl = report["perplexity"]
    return {"build": name, "flags": " ".join(flags), "env": env,
            "wall_s": round(time.time() - t0, 1), "build_s": report["build_s"],
            "quantizer": report["quantizer"], "increase": ppl["increase"],
            "increase_by_domain": ppl["increase_by_domain"],
            "variant": ppl["variant"], "base": ppl["base"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/qsmol"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/qsmol-out")))
    ap.add_argument("--only", default=",".join(BUILDS), help="comma-separated build names")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    path = a.out / "smollm2_builds.json"
    found: dict[str, Any] = {"gpus": subprocess.run(smi, capture_output=True, text=True).stdout,
                             "runs": []}  # fmt: skip
    for name in a.only.split(","):
        found["runs"].append(build(a.gguf, a.work, a.out, name))
        path.write_text(json.dumps(found, indent=2) + "\n")
        print(json.dumps(found["runs"][-1])[:1500], flush=True)
    print("| build | quantize s | build s | worst | by domain |")
    for r in found["runs"]:
        if "error" not in r:
            domains = ", ".join(f"{k} {100 * v:+.1f} %" for k, v in r["increase_by_domain"].items())
            print(f"| {r['build']} | {r['quantizer'].get('quantize_s', 0):.1f} | {r['build_s']} | "
                  f"{100 * r['increase']:+.2f} % | {domains} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
