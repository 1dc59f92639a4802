"""One phase of the GPU benchmark (docs/benchmarks.md), run through Quantgate itself.

    python3 benchmarks/gpu/experiment.py PHASE --work DIR --out DIR [--started-at EPOCH]
        [--budget-s 530] [--pin KERNEL] [--dry-run]

PHASE  GPUs  what
gptq   1     8B-shape bf16 model -> first request for llama8b:gptq-w4a16 -> GPTQ W4A16 job on
             the GPU -> kernel tuning -> tuned launch -> answer; then 1/16/64 streams direct
             to vLLM and through the gateway (64 streams twice each, for the gateway's cost)
awq    1     the same for AWQ W4A16
bf16   1     the 8B-shape bf16 base variant, 1/16/64 streams, both paths
tp     2     8B-shape bf16 with tensor parallel 2, then the same on 1 GPU; 1/16/64, both paths
pack   2     two W4A16 checkpoints (GPTQ and AWQ format, random weights) as two models, each on
             its own GPU by the placement, both served at once; 1/16/64 streams each
auto   1     GPTQ W4A16 as in gptq (calibration 32 x 512: time), served with optimize_for: auto
             at gpu_memory_utilization 0.45 (AUTO_GPU_SHARE=0.85: no room beside, the switch
             goes by sleep); 1, then 64, then 1 stream through the gateway, each until the
             kernel follower switches (and a level after) or has watched that load for its
             whole window and stayed. Run again on a kept --work, the variant starts on the
             kernel it was last switched to, without building or measuring again

Writes OUT/results.json after every step (what finished survives a timeout), and at the end
OUT/table.md and OUT/logs.tar.gz (gateway, jobs, vLLM). A step that would not finish within
``--budget-s`` of ``--started-at`` is skipped and listed. ``--dry-run`` runs the same steps on
a CPU machine against stand-ins (dryrun.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import summarize  # noqa: E402
from harness import SHUTDOWN_S, Clock, Gateway, Results, kill_leftovers, pack_logs, vllm_logs  # noqa: E402

GPUS = {"gptq": 1, "awq": 1, "bf16": 1, "tp": 2, "pack": 2, "auto": 1}
FORMATS = {
    "gptq": ["bf16"],
    "auto": ["bf16"],
    "awq": ["bf16"],
    "bf16": ["bf16"],
    "tp": ["bf16"],
    "pack": ["gptq", "awq"],
}
CUDA_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1", "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # fmt: skip
REQUIRED = ["fastapi", "starlette", "uvicorn", "httptools", "uvloop", "pydantic",
            "pydantic-settings", "prometheus-client", "PyYAML", "httpx", "redis", "aiohttp"]  # fmt: skip
PACKAGES = [*REQUIRED, "vllm", "torch", "transformers"]  # fmt: skip
SERVE = {"max_model_len": 2048, "gpu_memory_utilization": 0.85, "startup_timeout_s": 480,
         "drain_s": 5, "extra_args": ["--attention-backend", "TRITON_ATTN"],
         "env": {"VLLM_USE_FLASHINFER_SAMPLER": "0"}}  # fmt: skip
CALIBRATION = {"gptq": {"samples": 128, "max_seq_length": 512},  # as measured on an H100
               "awq": {"samples": 64, "max_seq_length": 512}}  # half: AWQ is ~2x slower  # fmt: skip
FOLLOW = {"window_s": 15, "hold_s": 0, "min_gain": 0.10}  # auto: serve.kernel_switch


def preflight(phase: str, results: Results, clock: Clock) -> None:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout  # fmt: skip
    gpus = [line.strip() for line in smi.splitlines() if line.strip()]
    results.data["machine"] = {"gpus": gpus, "python": sys.version.split()[0], "packages": versions,
                               "cpus": os.cpu_count()}  # fmt: skip
    results.step(clock, "preflight", gpus=len(gpus))
    missing = [n for n in REQUIRED if versions[n] is None]
    if missing:
        raise SystemExit(f"missing here: {missing}: put their wheels in .whl/ (docs/benchmarks.md)")
    if len(gpus) < GPUS[phase]:
        raise SystemExit(f"phase {phase} needs {GPUS[phase]} GPUs; this machine has {len(gpus)}")


def make_models(
    phase: str, work: Path, results: Results, clock: Clock, dry: bool
) -> dict[str, Path]:
    formats = FORMATS[phase]
    if dry:
        import dryrun

        return dryrun.models(work / "models", formats)
    log = work / "make_models.log"
    # two GPUs: write the formats side by side, one process per GPU
    procs = []
    for i, fmt in enumerate(formats):
        device = f"cuda:{i % GPUS[phase]}"
        cmd = [sys.executable, str(HERE / "make_models.py"), str(work / "models"), "--size", "8b",
               "--formats", fmt, "--device", device]  # fmt: skip
        with log.open("ab") as f:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True))
        if GPUS[phase] == 1:
            procs[-1].wait()
    for proc in procs:
        out, _ = proc.communicate()
        results.step(
            clock,
            "model",
            **(json.loads(out.splitlines()[-1]) if out.strip() else {"error": proc.returncode}),
        )
        if proc.returncode != 0:
            raise SystemExit(f"make_models failed: see {log}")
    return {fmt: work / "models" / fmt for fmt in formats}


def manifest(
    phase: str, work: Path, models: dict[str, Path], pin: str | None, goal: str = "balanced"
) -> dict[str, Any]:
    serve = {**SERVE, "optimize_for": goal, **({"kernel": pin} if pin else {})}
    calibration = dict(CALIBRATION)
    if phase == "auto":  # 0.45: room for a replica beside the first; 0.85: switch by sleep
        share = float(os.environ.get("AUTO_GPU_SHARE", "0.45"))
        serve |= {"optimize_for": "auto", "gpu_memory_utilization": share, "kernel_switch": FOLLOW}
        calibration["gptq"] = {"samples": 32, "max_seq_length": 512}
    if phase in ("gptq", "awq", "bf16", "auto"):
        variants: dict[str, Any] = {"base": {"method": "none"}}
        for method in ("gptq", "awq"):
            variants[f"{method}-w4a16"] = {"method": method, "bits": 4, "group_size": 128,
                                           "calibration": calibration[method]}  # fmt: skip
        spec = {"source": str(models["bf16"]), "default_variant": "base", "serve": serve,
                "on_missing": {"action": "wait", "max_wait_s": 900}, "variants": variants}  # fmt: skip
        return {"version": 1, "cache_dir": str(work / "cache"), "models": {"llama8b": spec}}
    if phase == "tp":
        out = {}
        for tp in (2, 1):
            out[f"llama8b-tp{tp}"] = {
                "source": str(models["bf16"]), "default_variant": "base",
                "serve": {**serve, "tensor_parallel_size": tp},
                "on_missing": {"action": "wait", "max_wait_s": 900},
                "variants": {"base": {"method": "none"}}}  # fmt: skip
        return {"version": 1, "cache_dir": str(work / "cache"), "models": out}
    # pack: pre-quantized checkpoints served as they are; Marlin pinned (no tuning: time)
    out = {}
    for fmt in ("gptq", "awq"):
        out[f"{fmt}8b"] = {
            "source": str(models[fmt]), "default_variant": "base",
            "serve": {**serve, "dtype": "auto", "kernel": pin or "MarlinLinearKernel"},
            "on_missing": {"action": "wait", "max_wait_s": 900},
            "variants": {"base": {"method": "none"}}}  # fmt: skip
    return {"version": 1, "cache_dir": str(work / "cache"), "models": out}


def first_requests(gw: Gateway, names: list[str], results: Results, clock: Clock) -> None:
    """One completion per name through the gateway, all at once; each brings its variant up
    (quantize, tune, launch as needed). Records the variants' states on the way."""

    def ask(name: str) -> dict[str, Any]:
        t0 = time.time()
        body = {"model": name, "prompt": "Quantgate on a GPU:", "max_tokens": 16, "temperature": 0}
        try:
            r = httpx.post(
                gw.url + "/v1/completions", json=body, timeout=max(clock.left() - SHUTDOWN_S, 1)
            )
            reply = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            return {
                "error": f"{type(exc).__name__}: {exc}",
                "latency_s": round(time.time() - t0, 1),
            }
        return {"status": r.status_code, "latency_s": round(time.time() - t0, 1),
                "model": reply.get("model"), "usage": reply.get("usage"), "error": reply.get("error")}  # fmt: skip

    seen: dict[str, tuple[Any, ...]] = {}
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(ask, name) for name in names}
        while not all(f.done() for f in futures.values()):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                for row in gw.get("/admin/variants")["data"]:
                    name = f"{row['model']}:{row['variant']}"
                    job = row.get("job") or {}
                    now = (
                        row["state"],
                        job.get("stage"),
                        row["kernel"]["tuning"],
                        row["kernel"]["kernel"],
                    )
                    if row["model"] in {n.split(":")[0] for n in names} and seen.get(name) != now:
                        seen[name] = now
                        results.step(clock, "state", variant=name, state=now[0], job_stage=now[1],
                                     tuning=now[2], kernel=now[3])  # fmt: skip
            time.sleep(2)
        for name, future in futures.items():
            results.data["first_requests"][name] = future.result()
            results.step(clock, "first request answered", variant=name, **future.result())


def replica_url(gw: Gateway, model: str, variant: str) -> str | None:
    for row in gw.get("/admin/backends")["data"]:
        if (row["model"], row["variant"], row["state"]) == (model, variant, "ready"):
            return str(row["url"])
    return None


def bench_variant(gw: Gateway, results: Results, clock: Clock, model: str, variant: str,
                  reps_at_64: int = 1) -> None:  # fmt: skip
    """1, 16 and 64 streams, direct to the replica and through the gateway, alternating."""
    name = f"{model}:{variant}"
    direct = replica_url(gw, model, variant)
    if direct is None:
        results.data["skipped"].append(f"bench {name}: no ready replica")
        results.save()
        return
    for conc in (1, 16, 64):
        for rep in range(reps_at_64 if conc == 64 else 1):
            for path, url in (("direct", direct), ("gateway", gw.url)):
                if clock.left() < SHUTDOWN_S + 25:
                    results.data["skipped"].append(f"bench {name} {path} x{conc}: out of time")
                    results.save()
                    continue
                try:
                    row = bench.run(url, name, conc)
                except Exception as exc:  # a failed level is a result too
                    row = {"conc": conc, "error": f"{type(exc).__name__}: {exc}"}
                results.data["bench"].append({"variant": name, "path": path, "rep": rep, **row})
                results.step(clock, "bench", variant=name, path=path, conc=conc,
                             out_tok_s=row.get("out_tok_s"), error=row.get("error"))  # fmt: skip


def follow_status(gw: Gateway, name: str) -> dict[str, Any]:
    """The variant's kernel status (``kernel`` and the follower's ``load`` view)."""
    model, variant = name.split(":")
    row = next(r for r in gw.get("/admin/variants")["data"]
               if (r["model"], r["variant"]) == (model, variant))  # fmt: skip
    return {"kernel": row["kernel"]["kernel"], **(row["kernel"]["load"] or {})}


def follow(gw: Gateway, results: Results, clock: Clock, name: str, conc: int) -> None:
    """``conc`` streams through the gateway, a level at a time, each level recorded with the
    kernel serving and what the follower says. It ends one level after a switch, or once the
    follower has seen this load for its whole window (and 5 s more) and stayed, or when time
    is short."""
    before, after, began = follow_status(gw, name).get("switches") or 0, 0, time.monotonic()
    while clock.left() > SHUTDOWN_S + 40 and after < 2:
        try:
            row = bench.run(gw.url, name, conc, rounds=8 if conc > 1 else 3)  # few gaps
        except Exception as exc:  # a failed request fails its level: recorded
            row = {"conc": conc, "error": f"{type(exc).__name__}: {exc}"}
        load = follow_status(gw, name)
        switches = load.get("switches") or 0
        after += switches > before and not load.get("switching")
        row |= {"kernel": load["kernel"], "switches": switches,
                "streams_per_replica": load.get("streams_per_replica"), "last": load.get("last")}  # fmt: skip
        results.data["bench"].append({"variant": name, "path": "gateway", "follow": conc, **row})
        results.step(clock, "follow", conc=conc, out_tok_s=row.get("out_tok_s"),
                     kernel=row["kernel"], switches=switches, error=row.get("error"))  # fmt: skip
        stayed = switches == before and not load.get("switching")
        if stayed and time.monotonic() - began > FOLLOW["window_s"] + 5:
            results.step(clock, "follow stayed", conc=conc, kernel=row["kernel"])
            return


def record(gw: Gateway, results: Results, clock: Clock, label: str) -> None:
    """Variants (kernel, tuning, job, report), jobs, replicas and placement, as the API says."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        results.data["variants"] = gw.get("/admin/variants")["data"]
        results.data["jobs"] = gw.get("/admin/jobs")["data"]
        backends = gw.get("/admin/backends")
        results.data["placement"][label] = {
            "placement": backends["placement"],
            "replicas": backends["data"],
        }
        results.data["models"] = gw.get("/v1/models")["data"]
        results.step(clock, "recorded", label=label, placement=backends["placement"])


def run_phase(phase: str, gw: Gateway, results: Results, clock: Clock) -> None:
    if phase in ("gptq", "awq"):
        name = f"{phase}-w4a16"
        first_requests(gw, [f"llama8b:{name}"], results, clock)
        record(gw, results, clock, name)
        bench_variant(gw, results, clock, "llama8b", name, reps_at_64=2)
    elif phase == "auto":
        name = "llama8b:gptq-w4a16"
        first_requests(gw, [name], results, clock)
        record(gw, results, clock, "auto")
        for conc in (1, 64, 1):  # low, high, low: a switch each way from either kernel
            follow(gw, results, clock, name, conc)
    elif phase == "bf16":
        first_requests(gw, ["llama8b:base"], results, clock)
        record(gw, results, clock, "base")
        bench_variant(gw, results, clock, "llama8b", "base", reps_at_64=2)
    elif phase == "tp":
        for model in ("llama8b-tp2", "llama8b-tp1"):
            first_requests(gw, [f"{model}:base"], results, clock)
            record(gw, results, clock, model)
            bench_variant(gw, results, clock, model, "base")
            with contextlib.suppress(httpx.HTTPError):
                gw.http.post(f"/admin/variants/{model}/base/stop", timeout=90)
            results.step(clock, "stopped", variant=f"{model}:base")
    else:  # pack
        first_requests(gw, ["gptq8b:base", "awq8b:base"], results, clock)
        record(gw, results, clock, "both")
        for model in ("gptq8b", "awq8b"):
            bench_variant(gw, results, clock, model, "base")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=GPUS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/qg"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/qg-out")))
    ap.add_argument("--started-at", type=float, default=time.time())
    ap.add_argument("--budget-s", type=float, default=550, help="from --started-at")
    ap.add_argument("--pin", help="serve.kernel for the phase (default: tune; pack: Marlin)")
    ap.add_argument(
        "--optimize-for",
        default="balanced",
        choices=["balanced", "latency", "throughput"],
        help="serve.optimize_for: which measured kernel serves",
    )
    ap.add_argument("--dry-run", action="store_true", help="on a CPU, against stand-ins")
    ap.add_argument("--fake-gpus", type=int, help="dry run: GPUs the fake nvidia-smi shows")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    clock, results = Clock(a.started_at, a.budget_s), Results(a.out, a.phase)
    env = {**os.environ, **CUDA_ENV, "PYTHONUNBUFFERED": "1",
           "QUANTGATE_VLLM_PYTHON": sys.executable, "QUANTGATE_QUANTIZER_PYTHON": sys.executable,
           "QUANTGATE_QUANTIZER_PYTHONPATH": os.environ.get("QUANTIZER_PYTHONPATH", "")}  # fmt: skip
    if a.dry_run:
        import dryrun

        fake = dryrun.prepare(a.work, a.fake_gpus or GPUS[a.phase])
        env.update(fake)
        os.environ["PATH"] = fake["PATH"]  # the fake nvidia-smi, for preflight too
    try:
        kill_leftovers(results, clock)
        preflight(a.phase, results, clock)
        models = make_models(a.phase, a.work, results, clock, a.dry_run)
        spec = manifest(a.phase, a.work, models, a.pin, a.optimize_for)
        (a.work / "manifest.yaml").write_text(json.dumps(spec, indent=2))  # JSON is YAML
        results.data["manifest"] = spec
        with Gateway(a.work / "manifest.yaml", env, a.work / "gateway.log") as gw:
            results.step(clock, "gateway up")
            run_phase(a.phase, gw, results, clock)
            record(gw, results, clock, "end")
        results.step(clock, "gateway stopped")
    finally:
        kill_leftovers(results, clock)
        results.data["vllm_logs"] = (
            vllm_logs(a.work / "cache") if (a.work / "cache").is_dir() else {}
        )
        results.data["elapsed_s"] = clock.now()
        results.save()
        (a.out / "table.md").write_text(summarize.table([results.data]))
        pack_logs(a.work, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
