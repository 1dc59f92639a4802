"""Swapping on one GPU: two 8B-shape variants that cannot both be awake take turns through
Quantgate's swapping (vLLM sleep mode), then a second cold start shows the compile cache.

    python3 benchmarks/gpu/swap.py --work /tmp/qg --out $OUT [--switches 24] [--only ...]
    (on the GPU host: bash benchmarks/gpu/run_swap.sh, which unpacks the bundle first)

Steps (results.json is rewritten after each; what finished survives a timeout):
  cold     first request for gptq8b, then for awq8b: each a cold start with an empty compile
           cache (awq8b's start puts gptq8b to sleep: 0.6 + 0.6 of the GPU do not fit)
  swap     ``--switches`` alternations gptq8b <-> awq8b, each a streamed request right after
           the switch and one more with the variant already awake: TTFT after a switch, and
           tokens/s right after a wake against tokens/s before the next switch
  recold   the gateway restarted on the same cache folder: gptq8b's cold start again, now with
           its compile cache warm (VLLM_CACHE_ROOT under the cache folder)
Writes OUT/results.json, OUT/table.md and OUT/logs.tar.gz. Back here, with the results kept
under docs/results/:
    python3 benchmarks/gpu/swap.py --write-docs docs/benchmarks.md RESULTS.json [RESULTS.json]
rewrites the swapping table of docs/benchmarks.md (between its swap-table markers) from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import experiment  # noqa: E402
from experiment import CUDA_ENV, SERVE, Clock, Gateway, Results  # noqa: E402

MODELS = ("gptq8b", "awq8b")
SHARE = 0.6  # of the GPU per variant: two do not fit under the placement's 0.95


def make_models(work: Path, results: Results, clock: Clock) -> dict[str, Path]:
    for fmt in ("gptq", "awq"):
        cmd = [sys.executable, str(HERE / "make_models.py"), str(work / "models"), "--size", "8b",
               "--formats", fmt, "--device", "cuda:0"]  # fmt: skip
        with (work / "make_models.log").open("ab") as log:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True).stdout
        results.step(clock, "model", **(json.loads(out.splitlines()[-1]) if out.strip() else {}))
    return {fmt: work / "models" / fmt for fmt in ("gptq", "awq")}


def manifest(work: Path, models: dict[str, Path]) -> dict[str, Any]:
    serve = {**SERVE, "gpu_memory_utilization": SHARE, "dtype": "auto",
             "kernel": "MarlinLinearKernel"}  # fmt: skip
    on_missing = {"action": "wait", "max_wait_s": 600}
    spec = {}
    for name in MODELS:
        spec[name] = {"source": str(models[name.removesuffix("8b")]), "default_variant": "base",
                      "serve": serve, "on_missing": on_missing,
                      "variants": {"base": {"method": "none"}}}  # fmt: skip
    swapping = {"min_awake_s": 0, "host_ram_gib": 64, "queue_size": 64}
    return {"version": 1, "cache_dir": str(work / "cache"), "swapping": swapping,
            "models": spec}  # fmt: skip


def stream(gw: Gateway, model: str, tokens: int = 64) -> dict[str, Any]:
    """One streamed completion of ``tokens`` tokens: TTFT, decode tokens/s, tokens."""
    body = {"model": model, "prompt": "Swapping variants on one GPU:", "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    first = last = None
    made = 0
    with gw.http.stream("POST", "/v1/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            return {"model": model, "status": r.status_code, "error": r.read().decode()[:300]}
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices"):  # a token (random weights: its text is often empty)
                first = first or time.perf_counter()
                last = time.perf_counter()
            if event.get("usage"):
                made = event["usage"]["completion_tokens"]
    if first is None or last is None:
        return {"model": model, "status": 200, "error": "no tokens"}
    decode = (made - 1) / (last - first) if last > first else None
    return {"model": model, "status": 200, "ttft_s": round(first - t0, 4),
            "decode_tok_s": round(decode, 1) if decode else None, "tokens": made,
            "total_s": round(time.perf_counter() - t0, 3)}  # fmt: skip


def clear_side_caches() -> list[str]:
    """The compile caches outside VLLM_CACHE_ROOT (inductor's in /tmp, Triton's in ~/.triton),
    gone as in a new pod: a warm start then owes only to the cache folder Quantgate keeps."""
    gone = list(Path("/tmp").glob("torchinductor_*"))
    gone += [Path.home() / ".triton", Path.home() / ".cache" / "vllm"]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return [str(p) for p in gone]


def residency(gw: Gateway) -> dict[str, str]:
    rows = gw.get("/admin/variants")["data"]
    return {r["model"]: r["residency"] for r in rows}


def swap_metrics(gw: Gateway) -> dict[str, Any]:
    text = gw.http.get("/metrics").text
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith(("quantgate_swap_seconds_sum", "quantgate_swap_seconds_count",
                            "quantgate_swaps_total")):  # fmt: skip
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def cold(gw: Gateway, results: Results, clock: Clock, label: str, model: str) -> None:
    t0 = time.time()
    first = stream(gw, model)
    row = next(r for r in gw.get("/admin/variants")["data"] if r["model"] == model)
    replica = row["replicas"][0] if row["replicas"] else {}
    results.data.setdefault("cold", []).append(
        {"label": label, "model": model, "answer_s": round(time.time() - t0, 1),
         "ready_s": replica.get("ready_s"), "first": first, "residency": residency(gw)}
    )  # fmt: skip
    results.step(clock, label, model=model, ready_s=replica.get("ready_s"), first=first)


def alternate(gw: Gateway, results: Results, clock: Clock, switches: int, tokens: int) -> None:
    rows = []
    for i in range(switches):
        if clock.left() < 60:
            results.data["skipped"].append(f"switches after {i}")
            break
        model = MODELS[i % 2]
        after = stream(gw, model, tokens)  # the other one is awake: a swap first
        steady = stream(gw, model, tokens)
        rows.append({"switch": i + 1, "model": model, "after_switch": after, "steady": steady,
                     "residency": residency(gw)})  # fmt: skip
        results.data["switches"] = rows
        results.save()
    results.data["swap_metrics"] = swap_metrics(gw)
    results.step(clock, "switches", done=len(rows))


def summary(data: dict[str, Any]) -> dict[str, Any]:
    rows = data.get("switches", [])
    ok = [
        r
        for r in rows
        if r["after_switch"].get("status") == 200 and r["steady"].get("status") == 200
    ]
    failed = sum(
        (r["after_switch"].get("status") != 200) + (r["steady"].get("status") != 200) for r in rows
    )
    if not ok:
        return {"switches": len(rows), "failed": failed}
    ttft = [r["after_switch"]["ttft_s"] for r in ok]
    steady_ttft = [r["steady"]["ttft_s"] for r in ok]
    ratios = [r["after_switch"]["decode_tok_s"] / r["steady"]["decode_tok_s"] for r in ok]
    p95 = sorted(ttft)[max(0, round(0.95 * len(ttft)) - 1)]  # nearest rank
    metrics = data.get("swap_metrics", {})

    def mean(kind: str) -> float | None:
        n = metrics.get(f'quantgate_swap_seconds_count{{kind="{kind}"}}')
        s = metrics.get(f'quantgate_swap_seconds_sum{{kind="{kind}"}}')
        return round(s / n, 3) if n and s is not None else None

    return {
        "switches": len(rows), "failed": failed,
        "ttft_after_switch_p50_s": round(statistics.median(ttft), 3),
        "ttft_after_switch_p95_s": p95, "ttft_after_switch_max_s": max(ttft),
        "ttft_steady_p50_s": round(statistics.median(steady_ttft), 3),
        "decode_after_wake_over_steady_p50": round(statistics.median(ratios), 3),
        "decode_after_wake_over_steady_min": round(min(ratios), 3),
        "decode_steady_tok_s_p50": statistics.median(r["steady"]["decode_tok_s"] for r in ok),
        "mean_sleep_s": mean("sleep"), "mean_wake_s": mean("wake"),
        "mean_queue_wait_s": mean("queue_wait"), "warm_cycle_s": mean("warm"),
    }  # fmt: skip


def table(data: dict[str, Any]) -> str:
    s = data.get("summary", {})
    machine = data.get("machine", {})
    lines = [f"GPU: {', '.join(machine.get('gpus', [])) or '?'}; vLLM "
             f"{machine.get('packages', {}).get('vllm')}", "",
             "| measure | value |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in s.items()]
    lines += ["", "| cold start | model | vLLM ready (s) | first answer (s) |", "|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['model']} | {c['ready_s']} | {c['answer_s']} |"
              for c in data.get("cold", [])]  # fmt: skip
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- swap-table:begin -->", "<!-- swap-table:end -->"


def docs_table(runs: list[dict[str, Any]]) -> str:
    """The docs/benchmarks.md table: the first run in full, later ones' decode ratios."""
    first = runs[0]
    s = first["summary"]
    fresh = [c for c in first.get("cold", []) if "empty" in c["label"]]
    warm = [c for c in first.get("cold", []) if "restart" in c["label"]]
    rows = [
        ("switches / failed requests", f"{s['switches']} / {s['failed']}"),
        ("TTFT after a switch p50 / p95 / max",
         f"{s['ttft_after_switch_p50_s']} / {s['ttft_after_switch_p95_s']} / "
         f"{s['ttft_after_switch_max_s']} s"),
        ("TTFT, variant already awake, p50", f"{s['ttft_steady_p50_s']} s"),
        ("sleep / wake, mean", f"{s['mean_sleep_s']} / {s['mean_wake_s']} s"),
        ("warm cycle after start-up (sleep + wake), mean", f"{s['warm_cycle_s']} s"),
    ]  # fmt: skip
    for run in runs:
        r, tokens = run["summary"], run["switches"][0]["steady"]["tokens"]
        rows.append((f"decode tok/s after a wake / awake, p50 (min), {tokens}-token answers, "
                     f"{r['switches']} switches",
                     f"{r['decode_after_wake_over_steady_p50']} "
                     f"({r['decode_after_wake_over_steady_min']})"))  # fmt: skip
    if fresh and warm:
        rows.append(("cold start ready: empty compile cache -> restart with VLLM_CACHE_ROOT kept",
                     f"{fresh[0]['ready_s']} s -> {warm[0]['ready_s']} s ({fresh[0]['model']})"))  # fmt: skip
    gpus = ", ".join(first.get("machine", {}).get("gpus", []))
    lines = [f"GPU: {gpus}; vLLM {first['machine']['packages']['vllm']}.", "",
             "| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]  # fmt: skip
    return "\n".join(lines)


def write_docs(docs: Path, results: list[Path]) -> None:
    text = docs.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table_text = docs_table([json.loads(p.read_text()) for p in results])
    docs.write_text(f"{head}{BEGIN}\n{table_text}\n{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qg"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/qg-out")))
    ap.add_argument("--started-at", type=float, default=time.time())
    ap.add_argument("--budget-s", type=float, default=560)
    ap.add_argument("--switches", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=64, help="per streamed request")
    ap.add_argument("--warm", action="store_true", help="keep the compile caches (swap part)")
    ap.add_argument("--only", choices=["swap", "recold"], help="one part (swap: cold + swap)")
    ap.add_argument("--dry-run", action="store_true", help="on a CPU, against stand-ins")
    ap.add_argument("--write-docs", type=Path, metavar="DOCS", help="rewrite DOCS's table from")
    ap.add_argument("results", nargs="*", type=Path, help="results.json files (--write-docs)")
    a = ap.parse_args()
    if a.write_docs:
        write_docs(a.write_docs, a.results)
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    clock, results = Clock(a.started_at, a.budget_s), Results(a.out, "swap")
    results.data["skipped"] = []
    env = {**os.environ, **CUDA_ENV, "PYTHONUNBUFFERED": "1",
           "QUANTGATE_VLLM_PYTHON": sys.executable,
           "QUANTGATE_QUANTIZER_PYTHON": sys.executable}  # nothing is built here  # fmt: skip
    env.pop("VLLM_CACHE_ROOT", None)  # the manifest's cache folder holds it
    if a.dry_run:
        import dryrun

        fake = dryrun.prepare(a.work, 1)
        env.update(fake)
        os.environ["PATH"] = fake["PATH"]  # the fake nvidia-smi, for preflight too
    try:
        experiment.kill_leftovers(results, clock)
        experiment.GPUS["swap"] = 1
        experiment.preflight("swap", results, clock)
        if a.dry_run:
            import dryrun

            models = dryrun.models(a.work / "models", ["gptq", "awq"])
        else:
            models = make_models(a.work, results, clock)
        spec = manifest(a.work, models)
        (a.work / "swap.yaml").write_text(json.dumps(spec, indent=2))
        results.data["manifest"] = spec
        if a.only != "recold":
            if not a.warm:
                shutil.rmtree(a.work / "cache", ignore_errors=True)  # a cold compile cache
            if not (a.dry_run or a.warm):
                results.step(clock, "cleared", paths=clear_side_caches())
            with Gateway(a.work / "swap.yaml", env, a.work / "gateway.log") as gw:
                label = "first start, " + (
                    "warm compile cache" if a.warm else "empty compile cache"
                )
                cold(gw, results, clock, label, MODELS[0])
                cold(gw, results, clock, label, MODELS[1])
                alternate(gw, results, clock, a.switches, a.tokens)
            results.data["summary"] = summary(results.data)
        if a.only != "swap" and clock.left() > 200:
            if not a.dry_run:
                results.step(clock, "cleared", paths=clear_side_caches())
            with Gateway(a.work / "swap.yaml", env, a.work / "gateway2.log") as gw:
                cold(gw, results, clock, "after a restart, compile cache warm", MODELS[0])
        elif a.only != "swap":
            results.data["skipped"].append("recold: not enough time left")
    finally:
        experiment.kill_leftovers(results, clock)
        results.data["elapsed_s"] = clock.now()
        results.save()
        (a.out / "table.md").write_text(table(results.data))
        experiment.pack_logs(a.work, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
