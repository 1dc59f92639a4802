"""bf16 and W4A16 (Machete, Marlin) in one run on one GPU: the W4A16/bf16 table without the
run-to-run spread of separate runs.

    python3 benchmarks/gpu/side_by_side.py --work /tmp/qg --out $OUT [--waves 4] [--budget-s 900]
        [--dry-run]

Writes the 8B-shape bf16 and GPTQ-format checkpoints (make_models.py, random weights: speed and
kernels are real, answers are noise) unless they are there, starts one vLLM per column on the
same GPU, one after the other (each at ``--share`` of its memory, so all three stay up), then
benchmarks them in turns: each wave runs 1, 16 and 64 streams on every server, the servers'
order rotating from wave to wave, so drift in the GPU's clocks falls on all columns alike.
Writes OUT/side_by_side.json after every level and OUT/side_by_side.md at the end (medians
over the waves, with the lowest and highest). ``--dry-run`` runs the same steps on a CPU
machine against stand-ins (dryrun.py: the fake vLLM, Marlin faster alone, Machete with many
streams); it checks the steps and the files, never speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import vllm_proc  # noqa: E402

COLUMNS = {  # name: (checkpoint format, extra environment)
    "bf16": ("bf16", {}),
    "w4a16-machete": ("gptq", {}),  # vLLM's default W4A16 kernel on Hopper
    "w4a16-marlin": ("gptq", {"VLLM_DISABLED_KERNELS": "MacheteLinearKernel"}),
}
VLLM_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "PYTHONUNBUFFERED": "1"}


def make_models(work: Path, formats: set[str]) -> None:
    missing = [f for f in sorted(formats) if not (work / "models" / f / ".complete").is_file()]
    if missing:
        cmd = [sys.executable, str(HERE / "make_models.py"), str(work / "models"),
               "--size", "8b", "--formats", ",".join(missing), "--device", "cuda:0"]  # fmt: skip
        subprocess.run(cmd, check=True)


def start(
    python: str, name: str, model: Path, port: int, share: float, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", name, "--port", str(port), "--max-model-len", "2048",
           "--gpu-memory-utilization", str(share), "--attention-backend", "TRITON_ATTN"]  # fmt: skip
    env = {**os.environ, **VLLM_ENV, **COLUMNS[name][1]}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def table(data: dict[str, Any]) -> str:
    """Medians over the waves after the first (which warms every server), if there are any."""
    names = list(data["servers"])
    first = 1 if data["waves_done"] > 1 else 0
    head = "| streams | " + " | ".join(names) + " |"
    lines = [f"GPU: {data.get('gpu')}; waves {first + 1} to {data['waves_done']}: median "
             "(lowest to highest) output tok/s, 128 in / 128 out, direct to vLLM", "", head,
             "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for conc in (1, 16, 64):
        cells = []
        for name in names:
            got = [r["out_tok_s"] for r in data["levels"]
                   if (r["server"], r["conc"]) == (name, conc) and r["wave"] >= first]  # fmt: skip
            cells.append(f"{statistics.median(got):,.0f} ({min(got):,.0f} to {max(got):,.0f})"
                         if got else "—")  # fmt: skip
        lines.append(f"| {conc} | " + " | ".join(cells) + " |")
    kernels = {n: s.get("kernels") for n, s in data["servers"].items()}
    return "\n".join(lines) + f"\n\nKernels named in each vLLM log: {kernels}\n"


def prepare(work: Path, dry_run: bool) -> str:
    """The checkpoints of every column; the Python that runs vLLM (the stand-in's if dry)."""
    formats = sorted({fmt for fmt, _ in COLUMNS.values()})
    if not dry_run:
        make_models(work, set(formats))
        return sys.executable
    import dryrun

    fake = dryrun.prepare(work, 1)
    os.environ.update(fake)  # the fake nvidia-smi, the fake vLLM's kernels and pace
    dryrun.models(work / "models", formats)
    return fake["QUANTGATE_VLLM_PYTHON"]


def waves(data: dict[str, Any], count: int, deadline: float, save: Callable[[], None]) -> None:
    """``count`` waves of 1, 16 and 64 streams on every server, the order rotating."""
    names = list(data["servers"])
    for wave in range(count):
        if time.monotonic() > deadline:
            break
        order = names[wave % len(names) :] + names[: wave % len(names)]
        for conc in (1, 16, 64):
            for name in order:
                url = f"http://127.0.0.1:{data['servers'][name]['port']}"
                row = {"wave": wave, "server": name, **bench.run(url, name, conc)}
                data["levels"].append(row)
                print(json.dumps({k: row[k] for k in ("wave", "server", "conc", "out_tok_s")}))
                save()
        data["waves_done"] = wave + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qg"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/qg-out")))
    ap.add_argument("--waves", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.28, help="gpu_memory_utilization per server")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=900,
        help="no wave starts after budget - 60 s (the 8B starts take ~8 min)",
    )
    ap.add_argument("--dry-run", action="store_true", help="on a CPU, against stand-ins")
    a = ap.parse_args()
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    python = prepare(a.work, a.dry_run)
    smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    gpu = subprocess.run(smi, capture_output=True, text=True).stdout.strip()
    data: dict[str, Any] = {"gpu": gpu, "servers": {}, "levels": [], "waves_done": 0}

    def save() -> None:
        (a.out / "side_by_side.json").write_text(json.dumps(data, indent=2) + "\n")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, (name, (fmt, _)) in enumerate(COLUMNS.items()):
            port, log = 8300 + i, a.out / f"vllm-{name}.log"
            procs.append(start(python, name, a.work / "models" / fmt, port, a.share, log))
            ready = vllm_proc.wait_healthy(procs[-1], port, log, 480)
            kernels = vllm_proc.kernels_in(log.read_text(errors="replace"))
            data["servers"][name] = {"port": port, "ready_s": ready, "kernels": kernels}
            print(json.dumps({"t_s": round(time.monotonic() - t0), "ready": name, "in_s": ready,
                              "kernels": kernels}), flush=True)  # fmt: skip
            save()
        waves(data, a.waves, t0 + a.budget_s - 60, save)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        data["elapsed_s"] = round(time.monotonic() - t0, 1)
        save()
        (a.out / "side_by_side.md").write_text(table(data))
        print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
