"""Quantization timing at full calibration size, through Quantgate's own jobs.

    python3 benchmarks/gpu/calibration.py --work /tmp/qg --out $OUT [--budget-s 330]
        [--samples 512] [--seq-len 2048] [--methods gptq,awq]

One 8B-shape bf16 model (make_models.py), then per method one ``quantgate serve`` whose only
GPU is its own (CUDA_VISIBLE_DEVICES), and ``POST /admin/variants/llama8b/<m>-w4a16/build``
with ``samples`` x ``seq-len`` calibration. The jobs run side by side, a GPU each. Every 5 s it
records each job's state from ``GET /admin/jobs`` and the layer llm-compressor's sequential
pipeline is on (``(k/33): Calibrating`` in the job log). A job that ends inside the budget is
timed by the job's own ``started_at`` / ``finished_at``; one that does not is reported with the
layers it finished, the seconds per layer after the first, and the total those project.
Each poll also keeps the GPU memory the job logged at its last layer's end, so a cache that
grows from layer to layer shows. Writes OUT/calibration.json after every poll and
OUT/calibration.md at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from experiment import CUDA_ENV, Gateway  # noqa: E402

LAYER = re.compile(r"\((\d+)/(\d+)\): (Calibrating|Propagating)")
MEMORY = re.compile(r"layer \d+/\d+: ([\d.]+) GiB of GPU memory allocated")


def tail_of(log: Path) -> str:
    """The end of a job log, progress bars' carriage returns as line ends ('' if unreadable)."""
    try:
        return log.read_bytes()[-200_000:].decode("utf-8", "replace").replace("\r", "\n")
    except OSError:
        return ""


def layer_of(text: str) -> tuple[int, int] | None:
    """(layer being calibrated, subgraphs) from the last progress line of a job log."""
    found = LAYER.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def gpu_gib_of(text: str) -> float | None:
    """GPU memory allocated at the last layer's end, as the job logs it on a GPU."""
    found = MEMORY.findall(text)
    return float(found[-1]) if found else None


def projection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per layer from the first time each layer was seen, and the total it projects."""
    first_seen: dict[int, float] = {}
    total = None
    for s in samples:
        if s.get("layer") is not None:
            first_seen.setdefault(s["layer"], s["t_s"])
            total = s["layers"]
    if len(first_seen) < 3 or total is None:
        return {"layers_seen": sorted(first_seen)}
    layers = sorted(first_seen)
    a, b = layers[1], layers[-1]  # the first layer also carries the pipeline's set-up
    per_layer = (first_seen[b] - first_seen[a]) / (b - a)
    start = first_seen[layers[0]]
    return {"layers_done": b - 1, "layers": total, "s_per_layer": round(per_layer, 1),
            "loop_started_s": start,
            "projected_loop_s": round(per_layer * total, 0)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qg"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/qg-out")))
    ap.add_argument("--budget-s", type=float, default=330)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--size", default="8b", help="make_models.py shape (tiny: a CPU dry run)")
    ap.add_argument("--device", default="cuda:0", help="where make_models.py writes from")
    a = ap.parse_args()
    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    methods = a.methods.split(",")
    data: dict[str, Any] = {"samples": a.samples, "seq_len": a.seq_len, "jobs": {}, "polls": {}}
    out_json = a.out / "calibration.json"

    def save() -> None:
        out_json.write_text(json.dumps(data, indent=2, default=str) + "\n")

    smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        data["gpus"] = subprocess.run(smi, capture_output=True, text=True).stdout.splitlines()
    except OSError:  # no nvidia-smi: a CPU dry run
        data["gpus"] = []
    model = a.work / "models" / "bf16"
    writer = sys.executable if not (model / ".complete").is_file() else "true"  # kept as it is
    made = subprocess.run([writer, str(HERE / "make_models.py"), str(a.work / "models"),
                           "--size", a.size, "--formats", "bf16", "--device", a.device],
                          capture_output=True, text=True)  # fmt: skip
    data["model"] = {"rc": made.returncode, "at_s": round(time.time() - t0, 1)}
    save()
    if made.returncode != 0:
        print(made.stderr[-3000:])
        return 1
    env = {**os.environ, **CUDA_ENV, "PYTHONUNBUFFERED": "1",
           "QUANTGATE_VLLM_PYTHON": sys.executable,
           "QUANTGATE_QUANTIZER_PYTHON": os.environ.get("QUANTGATE_QUANTIZER_PYTHON", sys.executable),
           "QUANTGATE_QUANTIZER_PYTHONPATH": os.environ.get("QUANTIZER_PYTHONPATH", "")}  # fmt: skip
    gateways: dict[str, Gateway] = {}
    try:
        for i, method in enumerate(methods):
            cache = a.work / f"cache-{method}"
            variant = {"method": method, "bits": 4, "group_size": 128,
                       "calibration": {"samples": a.samples, "max_seq_length": a.seq_len}}  # fmt: skip
            spec = {"version": 1, "cache_dir": str(cache), "models": {"llama8b": {
                "source": str(model), "default_variant": f"{method}-w4a16",
                "variants": {f"{method}-w4a16": variant}}}}  # fmt: skip
            path = a.work / f"manifest-{method}.yaml"
            path.write_text(json.dumps(spec))
            gw_env = {**env, "CUDA_VISIBLE_DEVICES": str(i % max(len(data["gpus"]), 1))}
            gw = Gateway(path, gw_env, a.work / f"gateway-{method}.log", port=8100 + i)
            gateways[method] = gw.__enter__()
            r = gw.http.post(f"/admin/variants/llama8b/{method}-w4a16/build")
            data["jobs"][method] = {
                "build": r.status_code,
                "submitted_s": round(time.time() - t0, 1),
            }
            data["polls"][method] = []
        while time.time() - t0 < a.budget_s:
            running = False
            for method, gw in gateways.items():
                try:
                    job = gw.get("/admin/jobs")["data"][0]
                except (httpx.HTTPError, ValueError, IndexError):
                    continue
                text = tail_of(Path(job["log"]))
                where = layer_of(text)
                poll = {"t_s": round(time.time() - t0, 1), "state": job["state"],
                        "stage": job.get("stage"), "layer": where and where[0],
                        "layers": where and where[1], "gpu_gib": gpu_gib_of(text)}  # fmt: skip
                data["polls"][method].append(poll)
                data["jobs"][method].update(job=job, **projection(data["polls"][method]))
                running |= job["state"] in ("queued", "running")
            save()
            if not running:
                break
            time.sleep(5)
    finally:
        for method, gw in gateways.items():
            try:
                for job in gw.get("/admin/jobs")["data"][:1]:
                    data["jobs"][method]["job"] = job
                    log = Path(job["log"])
                    (a.out / f"job-{method}.log").write_bytes(log.read_bytes()[-400_000:])
            except (httpx.HTTPError, ValueError, OSError) as exc:
                data["jobs"][method]["end_error"] = repr(exc)
            gw.__exit__(None, None, None)
        data["elapsed_s"] = round(time.time() - t0, 1)
        save()
        (a.out / "calibration.md").write_text(table(data))
        print(table(data))
    return 0


def table(data: dict[str, Any]) -> str:
    lines = [f"GPUs: {data.get('gpus')}; calibration {data['samples']} x {data['seq_len']} tokens",
             "", "| method | state | job s | layers done | s/layer | projected loop s | GPU GiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for method, info in data["jobs"].items():
        job = info.get("job") or {}
        took = None
        if job.get("finished_at") and job.get("started_at"):
            took = round(job["finished_at"] - job["started_at"], 1)
        done = info.get("layers") if job.get("state") == "succeeded" else info.get("layers_done")
        gib = [p["gpu_gib"] for p in data["polls"].get(method, []) if p.get("gpu_gib")]
        memory = f"{min(gib)} to {max(gib)}" if gib else "—"  # at layer ends, over the polls
        lines.append(f"| {method} | {job.get('state')} | {took} | "
                     f"{done}/{info.get('layers')} | {info.get('s_per_layer')} | "
                     f"{info.get('projected_loop_s')} | {memory} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
