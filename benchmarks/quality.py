"""The quality table of docs/quantization.md: SmolLM2-135M-Instruct quantized every way the CPU
can build, each variant's held-out perplexity per evaluation domain and its build time.

    .venv/bin/python benchmarks/quality.py [--out DIR] [--only NAME ...] [--json FILE]

Imports the demo's GGUF once (``make model``), builds each variant with ``quantgate quantize``
(the same worker as the gateway's jobs), one at a time, and prints a Markdown table; calibrated
methods are built with two calibration seeds. Run it on an otherwise idle machine: the build
times are wall-clock seconds of the whole ``quantgate quantize`` (quantization and the
variant's perplexity; the base is measured once, by the import).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / ".quantgate" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
G64 = ["--bits", "4", "--group-size", "64"]
ASYM = [*G64, "--no-symmetric"]
VARIANTS: dict[str, list[str]] = {
    "RTN W4A16 g64 sym": ["--method", "rtn", *G64],
    "RTN W4A16 g64 asym": ["--method", "rtn", *ASYM],
    "GPTQ W4A16 g64 sym": ["--method", "gptq", *G64],
    "GPTQ W4A16 g64 asym": ["--method", "gptq", *ASYM],
    "AWQ W4A16 g64 asym": ["--method", "awq", *ASYM, "--calibration-samples", "32"],
    "AutoRound W4A16 g64 asym": ["--method", "autoround", *ASYM],
    "GPTQ W4A8 g64 sym": ["--method", "gptq", *G64, "--activation-bits", "8"],
    "RTN W8A8": ["--method", "rtn", "--bits", "8", "--activation-bits", "8"],
    "SmoothQuant+GPTQ W8A8": ["--method", "w8a8"],
    "GGUF Q8_0": ["--method", "gguf", "--gguf-type", "q8_0"],
    "GGUF Q4_0": ["--method", "gguf", "--gguf-type", "q4_0"],
    "RTN W3 g64 asym": ["--method", "rtn", "--bits", "3", "--group-size", "64", "--no-symmetric"],
    "GPTQ W3 g64 asym": ["--method", "gptq", "--bits", "3", "--group-size", "64",
                         "--no-symmetric"],
}  # fmt: skip
CALIBRATED = ("gptq", "awq", "autoround", "w8a8")
SEEDS = (0, 1)
# AWQ calibrates on 32 windows of 256 tokens (its grid search takes ~10 min per 64 on 2 cores);
# the others on the default 64. AutoRound takes ~21 min a build on 2 cores.


def folder_of(name: str, seed: int | None, out: Path) -> Path:
    return out / (name.replace(" ", "_").replace("+", "-") + ("" if seed is None else f"-s{seed}"))


def build(name: str, flags: list[str], seed: int | None, out: Path) -> dict[str, Any]:
    folder = folder_of(name, seed, out)
    if not (folder / "report.json").is_file():
        args = ["--model-path", str(GGUF), "--cache-dir", str(out / "cache"),
                "--output-dir", str(folder), *flags]  # fmt: skip
        args += ["--seed", str(seed)] if seed is not None else []
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "quantize", *args],
                             capture_output=True, text=True)  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"{name}: quantgate quantize failed:\n{run.stderr[-3000:]}")
        print(f"{name} (seed {seed}): {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


def row(name: str, seed: int | None, report: dict[str, Any]) -> dict[str, Any]:
    ppl = report["perplexity"]
    return {
        "variant": name,
        "seed": seed,
        "increase": ppl["increase"],
        "by_domain": ppl["increase_by_domain"],
        "perplexity": {d: v["perplexity"] for d, v in ppl["variant"]["domains"].items()},
        "build_s": report["build_s"],
        "quantize_s": report["quantizer"].get("quantize_s"),
        "size_mib": round(report["size_bytes"] / 2**20, 1),
    }


def table(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    domains = list(base["domains"])
    head = "| variant | seed | worst | " + " | ".join(domains) + " | build s | size MiB |"
    lines = [head, "|" + "---|" * (len(domains) + 5)]
    cells = " | ".join(f"{base['domains'][d]['perplexity']:.2f}" for d in domains)
    lines.append(f"| base (Q4_1 dequantized, bf16) | | PPL | {cells} | | |")
    for r in rows:
        by = " | ".join(f"{r['by_domain'][d]:+.1%}" for d in domains)
        seed = "" if r["seed"] is None else str(r["seed"])
        lines.append(f"| {r['variant']} | {seed} | **{r['increase']:+.1%}** | {by} | "
                     f"{r['build_s']:.0f} | {r['size_mib']} |")  # fmt: skip
    return "\n".join(lines)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".quantgate" / "quality")
    ap.add_argument("--only", nargs="+", help="variant names (default: all)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="calibration seeds")
    ap.add_argument("--cached", action="store_true", help="only rows already built: no builds")
    args = ap.parse_args()
    if not GGUF.is_file():
        raise SystemExit(f"no model at {GGUF}: run `make model`")
    rows, base = [], None
    for name, flags in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        method = flags[flags.index("--method") + 1]
        for seed in args.seeds if method in CALIBRATED else (None,):
            if args.cached and not (folder_of(name, seed, args.out) / "report.json").is_file():
                continue
            report = build(name, flags, seed, args.out)
            base = base or report["perplexity"]["base"]
            rows.append(row(name, seed, report))
    assert base is not None
    print(table(base, rows))
    if args.json:
        machine = f"{cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}"
        args.json.write_text(json.dumps({"base": base, "rows": rows, "machine": machine}, indent=2))


if __name__ == "__main__":
    main()
