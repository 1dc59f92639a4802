"""``quantgate bench MANIFEST``: a table of every variant's size, memory, speed and quality.

Exits 1 when a variant failed (its build, its server or its requests: its row says why, the
others are measured all the same); 2 for an unknown ``--model`` or ``--variant``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from serving.bench import BenchRow, Load, run_bench
from serving.build import worker_command
from serving.fleet import open_fleet
from serving.hardware import Hardware
from serving.manifest import Manifest, load_manifest
from serving.settings import ServingSettings, read_settings

Name = tuple[str, str]  # (model, variant)
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
    p.add_argument("--requests", type=positive, default=16, help="completions at @N (default 16)")
    p.add_argument(
        "--concurrency", type=positive, default=8, help="N: requests at once (default 8)"
    )
    p.add_argument("--max-tokens", type=positive, default=64, help="tokens per completion (64)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    p.set_defaults(func=bench)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def selected(manifest: Manifest, model: str | None, variants: list[str] | None) -> list[Name]:
    """The (model, variant) pairs to measure; ValueError naming the known ones for a name
    the manifest does not have."""
    if model is not None and model not in manifest.models:
        known = ", ".join(manifest.models) or "none"
        raise ValueError(f"--model {model!r} is not in the manifest (its models: {known})")
    models = {m: spec for m, spec in manifest.models.items() if model in (None, m)}
    known_variants = list(dict.fromkeys(v for spec in models.values() for v in spec.variants))
    unknown = [v for v in variants or () if v not in known_variants]
    if unknown:
        where = f"model {model!r}" if model else "the manifest"
        raise ValueError(
            f"--variant {', '.join(map(repr, unknown))}: not in {where} (its variants: "
            f"{', '.join(known_variants) or 'none'})"
        )
    return [(m, v) for m, spec in models.items() for v in spec.variants if v in (variants or [v])]


def bench(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    try:
        names = selected(manifest, args.model, args.variant)
    except ValueError as exc:
        print(f"quantgate bench: {exc}", file=sys.stderr)
        return 2
    settings = read_settings(ServingSettings)
    command = worker_command(
        settings.quantizer_python, manifest.cache_dir / ".runtime", settings.quantizer_pythonpath
    )
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
    failed = [f"{r.model}:{r.variant}" for r in rows if r.failed]
    if failed:
        print(f"quantgate bench: failed: {', '.join(failed)} (see the notes)", file=sys.stderr)
        return 1
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
