"""One markdown table from the results.json of one or more phases of experiment.py.

    python3 benchmarks/gpu/summarize.py RESULTS.json [RESULTS.json ...] > table.md

Tokens/s are the mean over repeats; ratios across phases are computed only from what was
measured (a missing number stays missing). Nothing here is estimated.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BF16 = ("llama8b:base", "llama8b-tp1:base")
W4A16 = ("llama8b:gptq-w4a16", "llama8b:awq-w4a16", "gptq8b:base", "awq8b:base")


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def throughput(results: list[dict[str, Any]]) -> dict[tuple[str, str, int], float | None]:
    """(variant, path, streams) -> mean output tokens/s."""
    runs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for res in results:
        for row in res.get("bench", []):
            if row.get("out_tok_s") is not None:
                runs[(row["variant"], row["path"], row["conc"])].append(row["out_tok_s"])
    return {key: _mean(values) for key, values in runs.items()}


def serving_kernels(res: dict[str, Any]) -> dict[str, str]:
    """variant -> the kernel its serving replica's vLLM log names."""
    logs = res.get("vllm_logs", {})
    found: dict[str, str] = {}
    for record in res.get("placement", {}).values():
        for replica in record.get("replicas", []):
            name = Path(str(replica.get("log") or "")).name
            kernels = (logs.get(name) or {}).get("kernels") or []
            found[f"{replica['model']}:{replica['variant']}"] = (
                ", ".join(k.split()[1] for k in kernels) or "— (dense)"
            )
    return found


def bench_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| phase | variant | kernel (vLLM log) | path | streams | out tok/s | TTFT p50 ms "
             "| ITL p50 ms | repeats |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        kernels = serving_kernels(res)
        groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        for row in res.get("bench", []):
            groups[(row["variant"], row["path"], row["conc"])].append(row)
        for (variant, path, conc), rows in groups.items():
            ok = [r for r in rows if r.get("out_tok_s") is not None]
            tok = _mean([r["out_tok_s"] for r in ok])
            ttft = _mean([r["ttft_p50_ms"] for r in ok if r.get("ttft_p50_ms") is not None])
            itl = _mean([r["itl_p50_ms"] for r in ok if r.get("itl_p50_ms") is not None])
            err = next((r["error"] for r in rows if r.get("error")), None)
            lines.append(f"| {res['phase']} | {variant} | {kernels.get(variant, '?')} | {path} "
                         f"| {conc} | {_fmt(tok)}{' (' + err + ')' if err else ''} | {_fmt(ttft)} "
                         f"| {_fmt(itl, 2)} | {len(ok)} |")  # fmt: skip
    return lines


def gateway_cost(tok: dict[tuple[str, str, int], float | None]) -> list[str]:
    lines = ["| variant | streams | direct tok/s | gateway tok/s | gateway cost |",
             "|---|---|---|---|---|"]  # fmt: skip
    for (variant, path, conc), direct in sorted(tok.items()):
        via = tok.get((variant, "gateway", conc))
        if path != "direct" or direct is None or via is None:
            continue
        cost = 100 * (1 - via / direct)
        lines.append(f"| {variant} | {conc} | {direct:,.1f} | {via:,.1f} | {cost:+.2f} % |")
    return lines


def tuning_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | GPU and vLLM | candidate | kernel used | tok/s @1 | tok/s @64 | ready s "
             "| winner |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ratios = []
    for res in results:
        for row in res.get("variants", []):
            for key, tuned in (row["kernel"].get("measured") or {}).items():
                cands = tuned.get("candidates", {})
                for kernel, c in cands.items():
                    mark = "**yes**" if kernel == tuned.get("winner") else ""
                    lines.append(f"| {row['model']}:{row['variant']} | {key.replace('|', ' / ')} | {kernel} "
                                 f"| {c.get('used') or c.get('error', '?')} | {_fmt(c.get('tok_s_1'))} "
                                 f"| {_fmt(c.get('tok_s_64'))} | {_fmt(c.get('ready_s'))} | {mark} |")  # fmt: skip
                win, default = (
                    cands.get(tuned.get("winner"), {}),
                    cands.get(tuned.get("default"), {}),
                )
                if win.get("tok_s_1") and default.get("tok_s_1"):
                    ratios.append(f"- {row['model']}:{row['variant']} on {key}: tuned "
                                  f"({tuned['winner']}) / vLLM default ({tuned['default']}) = "
                                  f"{win['tok_s_1'] / default['tok_s_1']:.3f} at 1 stream, "
                                  f"{win['tok_s_64'] / default['tok_s_64']:.3f} at 64 streams")  # fmt: skip
    return [*lines, "", *ratios]


def jobs_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | job state | job s (gateway) | load s | quantize s | total s (worker) "
             "| calibration |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        reports = {
            f"{v['model']}:{v['variant']}": v.get("report") or {} for v in res.get("variants", [])
        }
        for job in res.get("jobs", []):
            name = f"{job['model']}:{job['variant']}"
            report = reports.get(name, {})
            q = report.get("quantizer") or {}
            calib = (report.get("recipe") or {}).get("calibration") or {}
            lines.append(f"| {name} | {job['state']} | {_fmt(job.get('duration_s'))} "
                         f"| {_fmt(q.get('load_s'))} | {_fmt(q.get('quantize_s'))} "
                         f"| {_fmt(q.get('total_s'))} | {calib.get('samples', '?')} x "
                         f"{calib.get('max_seq_length', '?')} |")  # fmt: skip
    return lines


def first_request_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for res in results:
        for name, r in res.get("first_requests", {}).items():
            lines.append(f"- {name}: HTTP {r.get('status', '—')} after {_fmt(r.get('latency_s'))} s "
                         f"(build, tuning and start included){'; error: ' + str(r['error']) if r.get('error') else ''}")  # fmt: skip
    return lines


def ratio_lines(tok: dict[tuple[str, str, int], float | None]) -> list[str]:
    def ratio(a: str, b: str, conc: int) -> str:
        for path in ("gateway", "direct"):
            x, y = tok.get((a, path, conc)), tok.get((b, path, conc))
            if x and y:
                return f"{x / y:.2f} ({path})"
        return "—"

    lines = []
    for bf16 in BF16:
        for quant in W4A16:
            if any(k[0] == quant for k in tok) and any(k[0] == bf16 for k in tok):
                lines.append(f"- {quant} / {bf16} tokens/s: {ratio(quant, bf16, 1)} at 1 stream, "
                             f"{ratio(quant, bf16, 64)} at 64 streams")  # fmt: skip
    tp2, tp1 = "llama8b-tp2:base", "llama8b-tp1:base"
    if any(k[0] == tp2 for k in tok):
        lines.append(f"- TP-2 / TP-1 (bf16) tokens/s: {ratio(tp2, tp1, 1)} at 1 stream, "
                     f"{ratio(tp2, tp1, 64)} at 64 streams")  # fmt: skip
    return lines


def table(results: list[dict[str, Any]]) -> str:
    tok = throughput(results)
    head = []
    for res in results:
        machine = res.get("machine", {})
        pkgs = machine.get("packages", {})
        head.append(f"- phase `{res['phase']}`: {'; '.join(machine.get('gpus', [])) or '?'}; "
                    f"vLLM {pkgs.get('vllm')}, torch {pkgs.get('torch')}; {res.get('elapsed_s')} s; "
                    f"skipped: {res.get('skipped') or 'nothing'}")  # fmt: skip
    placement = [f"- {res['phase']} / {label}: {rec.get('placement')}"
                 for res in results for label, rec in res.get("placement", {}).items()]  # fmt: skip
    parts = [
        "# GPU benchmark (random-weight 8B-shape Llama, 128 tokens in / 128 out, ignore_eos)",
        "", *head, "", "## Through Quantgate: first request per variant", "",
        *first_request_lines(results), "", "## Throughput and latency", "", *bench_table(results),
        "", "## Gateway cost (tokens/s through the gateway vs direct to vLLM)", "",
        *gateway_cost(tok), "", "## Ratios", "", *(ratio_lines(tok) or ["- none measured"]), "",
        "## Kernel tuning (the tuner's own benchmark)", "", *tuning_table(results), "",
        "## Quantization jobs", "", *jobs_table(results), "", "## Placement (GET /admin/backends)",
        "", *(placement or ["- none recorded"]), "",
    ]  # fmt: skip
    return "\n".join(parts)


def main() -> None:
    results = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    print(table(results))


if __name__ == "__main__":
    main()
