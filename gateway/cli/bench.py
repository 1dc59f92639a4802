"""``quantgate bench MANIFEST``: a table of every variant's size, memory, speed and quality."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from serving.bench import BenchRow, Load, run_bench
from serving.build import worker_command
from serving.fleet import open_fleet
from serving.hardware import Hardware
from serving.manifest import load_manifest
from serving.settings import ServingSettings

COLUMNS = ("variant", "scheme", "size MiB", "peak GiB", "tok/s @1", "tok/s @N", "PPL", "ΔPPL")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="build, serve (real vLLM) and measure every variant: size, memory, tokens/s, PPL",
        description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
    )
    p.add_argument("manifest", type=Path, help="the model manifest (YAML)")
    p.add_argument("--model", help="only this model (default: all)")
    p.add_argument("--variant", action="append", help="only these variants (repeatable)")
    p.add_argument("--requests", type=int, default=16, help="completions at @N (default 16)")
    p.add_argument("--concurrency", type=int, default=8, help="N: requests at once (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per completion")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    settings = ServingSettings()
    command = worker_command(
        settings.quantizer_python, manifest.cache_dir / ".runtime", settings.quantizer_pythonpath
    )
    names = [
        (m, v)
        for m, model in manifest.models.items()
        if args.model in (None, m)
        for v in model.variants
        if not args.variant or v in args.variant
    ]
    load = Load(args.requests, args.concurrency, args.max_tokens)
    logging.basicConfig(level=logging.WARNING)

    async def measure() -> list[BenchRow]:
        fleet = open_fleet(
            manifest, command, settings.vllm_python, Hardware.detect(),
            max_concurrent_jobs=settings.max_concurrent_jobs,
        )  # fmt: skip
        try:
            return await run_bench(fleet, names, load)
        finally:
            await fleet.aclose()

    rows = asyncio.run(measure())
    print(json.dumps([r.as_dict() for r in rows], indent=2) if args.json else table(rows, load))
    return 0


def table(rows: list[BenchRow], load: Load) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    cells = [
        (
            f"{r.model}:{r.variant}",
            r.scheme,
            num(r.size_bytes and r.size_bytes / 2**20, ".1f"),
            num(r.peak_rss_bytes and r.peak_rss_bytes / 2**30, ".2f"),
            num(r.tokens_per_s_1, ".0f"),
            num(r.tokens_per_s_n, ".0f"),
            num(r.perplexity, ".2f"),
            num(r.ppl_increase, "+.2%"),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    notes = [f"  {r.model}:{r.variant}: {r.note}" for r in rows if r.note]
    footer = [
        f"N = {load.concurrency} concurrent; {load.max_tokens} tokens per completion (ignore_eos)",
        "peak = sum of VmHWM over the vLLM process group (KV cache space included)",
        "PPL: pooled over the held-out domains, strided (context 256, stride 128); "
        "ΔPPL: the worst domain's increase over the base (what the quality gate reads)",
    ]
    return "\n".join([*lines, "", *footer, *(["", "notes:", *notes] if notes else [])])
