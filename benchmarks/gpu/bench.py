"""Closed-loop load on an OpenAI-compatible /v1/completions: C streams in flight, fixed lengths.

    python3 bench.py BASE_URL MODEL [--conc 1,16,64] [--prompt-tokens 128] [--out-tokens 128]

Each request streams ``out-tokens`` tokens (ignore_eos) after a prompt of ``prompt-tokens``
token ids (exact length whatever the tokenizer; ids 100-999 exist in every vocabulary). Prints
one JSON line per concurrency: output tokens/s (from the usage vLLM reports), TTFT and
inter-token latency percentiles. (aiohttp: the
client must not be the bottleneck at 64 streams of ~10,000 tokens/s; against a local stand-in
that streams without delay it read ~100,000 tokens/s at 16 and 64 streams on a 2-core machine,
the stand-in sharing the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp


async def _one(
    session: aiohttp.ClientSession, url: str, model: str, prompt: list[int], n: int
) -> tuple[float, list[float], int]:
    body = {"model": model, "prompt": prompt, "max_tokens": n, "min_tokens": n,
            "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    first: float | None = None
    stamps: list[float] = []
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            now = time.perf_counter()
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            if event.get("choices"):
                first = first or now
                stamps.append(now)
    itl = [b - a for a, b in itertools.pairwise(stamps)]
    return (first or time.perf_counter()) - t0, itl, tokens or len(stamps)


def _prompt(length: int, seed: int) -> list[int]:
    return [100 + (seed * 31 + i) % 900 for i in range(length)]


async def level(
    url: str, model: str, conc: int, prompt_tokens: int, out_tokens: int, rounds: int
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=conc + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
        await _one(s, url, model, _prompt(prompt_tokens, 0), 8)  # warm
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(conc * rounds):
            queue.put_nowait(i)
        results: list[tuple[float, list[float], int]] = []

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                results.append(await _one(s, url, model, _prompt(prompt_tokens, i), out_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conc)])
        wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    itl = sorted(x for r in results for x in r[1])
    tokens = sum(r[2] for r in results)
    return {"conc": conc, "requests": len(results), "tokens": tokens,
            "wall_s": round(wall, 3), "out_tok_s": round(tokens / wall, 1),
            "ttft_p50_ms": _pct(ttft, 0.5), "ttft_p99_ms": _pct(ttft, 0.99),
            "itl_p50_ms": _pct(itl, 0.5), "itl_p99_ms": _pct(itl, 0.99)}  # fmt: skip


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)


def run(
    url: str, model: str, conc: int, prompt_tokens: int = 128, out_tokens: int = 128,
    rounds: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One concurrency level (rounds: requests per stream; default 5 at 1 stream, else 3)."""
    n = rounds or (5 if conc == 1 else 3)
    return asyncio.run(level(url.rstrip("/"), model, conc, prompt_tokens, out_tokens, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--conc", default="1,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--out-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int)
    a = ap.parse_args()
    for c in map(int, a.conc.split(",")):
        print(json.dumps(run(a.url, a.model, c, a.prompt_tokens, a.out_tokens, a.rounds)))


if __name__ == "__main__":
    main()
