"""``quantgate recommend``: the quantization method for a model size, memory and priority."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from serving.hardware import Gpu, Hardware
from serving.recommend import (
    MeasuredRow,
    Recommendation,
    Workload,
    kv_per_token_from_config,
    parse_size,
    read_measured,
    recommend,
)

GPUS = {  # name -> compute capability x 10
    "h200": 90, "h100": 90, "gh200": 90, "l40s": 89, "l4": 89, "rtx4090": 89, "a100": 80,
    "a10": 86, "a10g": 86, "rtx3090": 86, "t4": 75, "v100": 70,
}  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser(
        "recommend",
        help="which quantization method to serve a model with, and why",
        description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
    )
    p.add_argument("--model-size", required=True, help="parameters: 8B, 70B, 1.5B")
    p.add_argument(
        "--gpu-memory", required=True, help="memory per GPU (or host RAM with --gpu cpu): 24GiB"
    )
    p.add_argument(
        "--priority",
        choices=["quality", "speed", "memory"],
        default="quality",
        help="what matters most (default quality)",
    )
    p.add_argument(
        "--gpu",
        default="a100",
        help=f"GPU type ({', '.join(sorted(GPUS))}), or cpu (this host's CPU), cpu-avx2 or "
        "cpu-avx512 (default: a100)",
    )
    p.add_argument(
        "--measured", type=Path, help="`quantgate bench --json` output: measured rows to use"
    )
    p.add_argument("--gpus", type=int, default=1, help="GPUs per replica (tensor parallel)")
    p.add_argument("--context-length", type=int, help="tokens per request (prompt + output)")
    p.add_argument("--concurrency", type=int, help="requests at once, each at full context")
    p.add_argument(
        "--model-config",
        type=Path,
        help="the model's config.json: its exact KV cache size per token (default: estimated "
        "from the size, for Llama-style models)",
    )
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run)


def hardware(name: str, memory_gib: float) -> Hardware:
    key = name.lower().replace(" ", "").replace("-", "")
    if key == "cpu":  # this host's: its flags are read, not assumed
        return Hardware("cpu", Hardware.detect().cpu_flags)
    if key == "cpuavx2":
        return Hardware("cpu", frozenset({"avx2"}))
    if key == "cpuavx512":
        return Hardware("cpu", frozenset({"avx2", "avx512f"}))
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}: one of {', '.join(sorted(GPUS))}, or cpu")
    return Hardware("cuda", gpus=(Gpu(0, name, GPUS[key], int(memory_gib * 1024)),))


def run(args: argparse.Namespace) -> int:
    try:
        params = _size(args.model_size, "params", "--model-size")
        memory = _size(args.gpu_memory, "memory", "--gpu-memory")
        hw = hardware(args.gpu, memory)
        measured = _measured(args.measured)
        workload = _workload(args)
    except (ValueError, OSError) as exc:
        print(f"quantgate recommend: {exc}", file=sys.stderr)
        return 2
    rec = recommend(params, memory, args.priority, hw, measured, workload)
    if args.json:
        print(json.dumps(rec.__dict__, indent=2))
        return 0 if rec.choice else 1
    _print(rec)
    return 0 if rec.choice else 1


def _size(text: str, unit: str, flag: str) -> float:
    try:
        return parse_size(text, unit)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _measured(path: Path | None) -> list[MeasuredRow]:
    """The rows of ``quantgate bench --json`` output in ``path`` (none without it)."""
    if path is None:
        return []
    try:
        return read_measured(path.read_text())
    except ValueError as exc:
        raise ValueError(f"--measured {path}: {exc}") from None


def _workload(args: argparse.Namespace) -> Workload:
    if (args.context_length is None) != (args.concurrency is None):
        raise ValueError("--context-length and --concurrency go together")
    if args.gpus < 1 or (args.concurrency or 1) < 1 or (args.context_length or 1) < 1:
        raise ValueError("--gpus, --concurrency and --context-length are at least 1")
    kv = _kv_per_token(args.model_config) if args.model_config else None
    return Workload(args.context_length, args.concurrency, args.gpus, kv)


def _kv_per_token(path: Path) -> float:
    """KV cache bytes per token from a model's ``config.json``; ValueError saying why not."""
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"--model-config {path}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--model-config {path}: not a model's config.json (a JSON object)")
    try:
        kv = kv_per_token_from_config(config)
    except KeyError as exc:
        raise ValueError(f"--model-config {path}: no {exc} in it") from None
    except (TypeError, ZeroDivisionError):
        kv = 0.0
    if kv <= 0:
        raise ValueError(
            f"--model-config {path}: its layers, heads and sizes are not whole numbers above 0"
        )
    return kv


def _print(rec: Recommendation) -> None:
    if rec.choice:
        serve = f", serve: {json.dumps(rec.serve)}" if rec.serve else ""
        print(f"recommended: {rec.choice}  (manifest variant: {json.dumps(rec.variant)}{serve})")
    else:
        print("no method fits")
    for reason in rec.reasons:
        print(f"  - {reason}")
    print("considered:")
    for row in rec.considered:
        state = "unsupported" if row["unsupported"] else ("fits" if row["fits"] else "too big")
        extra = f", {row['tokens_per_s_n']:.0f} tok/s" if row.get("tokens_per_s_n") else ""
        if "full_context_requests" in row:
            extra += f", KV cache for {row['full_context_requests']} requests at full context"
        name, scheme, gib = row["candidate"], row["scheme"], row["weights_gib"]
        print(f"  {name:<12} {scheme:<7} {gib:>6} GiB  {state}{extra}")
