"""``quantgate bench``: per variant, size on disk, peak memory, tokens/s and perplexity.

Each variant goes through the fleet as a request would: built if missing (its report gives
the perplexity of variant and base), started on real vLLM, then measured with completions
that ignore EOS (so every request generates ``max_tokens``): once one request at a time, once
``concurrency`` at a time. Peak memory is the sum of each process's peak resident set
(``VmHWM``) over the vLLM server's process group, KV cache space included. The server is
stopped before the next variant starts. Variants this machine cannot serve, or that are over
their quality budget, are built and measured for perplexity only, with the reason. A variant
whose build, server or requests fail keeps its row with the reason, marked ``failed``; the
others are measured all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from serving.errors import QuantgateError
from serving.fleet import Fleet
from serving.quality import over_budget
from serving.store import dir_size

PROMPT = "The json module can encode and decode data. It"


@dataclass
class BenchRow:
    model: str
    variant: str
    method: str
    scheme: str
    size_bytes: int | None = None
    peak_rss_bytes: int | None = None
    tokens_per_s_1: float | None = None
    tokens_per_s_n: float | None = None
    ready_s: float | None = None
    perplexity: float | None = None
    ppl_increase: float | None = None
    note: str = ""
    failed: bool = False  # not built, or not measured although this machine can serve it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Load:
    requests: int = 16
    concurrency: int = 8
    max_tokens: int = 64


async def bench_variant(fleet: Fleet, model: str, name: str, load: Load) -> BenchRow:
    info = fleet.status(model, name)
    row = BenchRow(model, name, info.method, info.scheme)
    try:
        await _build(fleet, model, name)
    except QuantgateError as exc:
        row.note, row.failed = f"build failed: {_first_line(exc)}", True
        return row
    _read_report(fleet, model, name, row)
    kernel = fleet.kernel(model, name)
    if not kernel.supported:
        row.note = f"not served here: {kernel.reason}"
        return row
    refusal = over_budget(
        fleet.manifest.models[model].variants[name], fleet.status(model, name).report
    )
    if refusal:  # the manifest's quality gate: the row's perplexity says why
        row.note = f"not served: {refusal}"
        return row
    try:
        await _serve_and_measure(fleet, model, name, load, row)
    except QuantgateError as exc:
        row.note, row.failed = f"not served: {_first_line(exc)}", True
    except httpx.HTTPError as exc:
        row.note, row.failed = f"measuring failed: {_http_failure(exc)}", True
    finally:
        await fleet.stop(model, name)
    return row


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _http_failure(exc: httpx.HTTPError) -> str:
    """``400 <the server's message>``, or what kept the request from an answer."""
    if not isinstance(exc, httpx.HTTPStatusError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    response = exc.response
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error", body) if isinstance(body, dict) else None  # OpenAI's, or vLLM's
    message = error.get("message") if isinstance(error, dict) else None
    return f"{response.status_code} {message or response.text[:200] or response.reason_phrase}"


async def _build(fleet: Fleet, model: str, name: str) -> None:
    """Build only: each variant is started later, alone, for its measure."""
    job = fleet.build(model, name, start=False)
    if job is not None:
        await job.wait()


def _read_report(fleet: Fleet, model: str, name: str, row: BenchRow) -> None:
    info = fleet.status(model, name)
    report = info.report
    spec = fleet.manifest.models[model]
    source = spec.source_path if spec.source is not None else None
    if report is None and source is not None:  # the base weights, or FP8 (quantized at load)
        row.size_bytes = dir_size(source)
        base = fleet.jobs.base_perplexity(spec) if info.method == "none" else None
        row.perplexity, row.ppl_increase = (base["perplexity"], 0.0) if base else (None, None)
        return
    if report is None:  # an upstream: nothing on this disk
        return
    row.size_bytes = report["size_bytes"]
    ppl = report.get("perplexity") or {}
    row.perplexity = (ppl.get("variant") or {}).get("perplexity")
    row.ppl_increase = ppl.get("increase")


async def _serve_and_measure(
    fleet: Fleet, model: str, name: str, load: Load, row: BenchRow
) -> None:
    t0 = time.monotonic()
    await fleet.scale(model, name, 1)  # one replica: the measure is of one vLLM server
    row.ready_s = round(time.monotonic() - t0, 1)
    lease = await fleet.acquire(model, name)
    served = lease.forward_name(f"{model}:{name}") or f"{model}:{name}"  # an upstream's own
    try:
        async with httpx.AsyncClient(
            base_url=lease.url, headers=lease.headers, timeout=300
        ) as client:
            body = {"model": served, "prompt": PROMPT, "max_tokens": load.max_tokens}
            body["ignore_eos"] = True
            await _generate(client, body, 1, 1)  # warm-up
            row.tokens_per_s_1 = await _generate(client, body, max(2, load.requests // 4), 1)
            row.tokens_per_s_n = await _generate(client, body, load.requests, load.concurrency)
    finally:
        lease.release()
    pid = lease.replica.describe()["pid"]
    row.peak_rss_bytes = group_peak_rss(pid) if pid else None


async def _generate(
    client: httpx.AsyncClient, body: dict[str, Any], requests: int, concurrency: int
) -> float:
    """Generated tokens per second over ``requests`` completions, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with slots:
            r = await client.post("/v1/completions", json=body)
            r.raise_for_status()
            tokens: int = r.json()["usage"]["completion_tokens"]
            return tokens

    t0 = time.monotonic()
    tokens = await asyncio.gather(*(one() for _ in range(requests)))
    return round(sum(tokens) / (time.monotonic() - t0), 1)


def group_peak_rss(pgid: int) -> int | None:
    """Sum of VmHWM (peak resident set) over the live processes of a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields after "(comm)": state, ppid, pgrp, ...
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total or None


async def run_bench(fleet: Fleet, names: list[tuple[str, str]], load: Load) -> list[BenchRow]:
    """Build every variant first (the first build measures the base's perplexity too), then
    serve and measure them one at a time."""
    for model, name in names:
        with contextlib.suppress(QuantgateError):  # bench_variant reports it
            await _build(fleet, model, name)
    return [await bench_variant(fleet, model, name, load) for model, name in names]
