"""The tuner's yardstick: a short fixed decode benchmark against one vLLM server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class DecodeBench:
    """A short fixed decode benchmark: prompts of ``prompt_tokens`` fixed token ids and
    ``out_tokens`` tokens out (ignore_eos); ``serial`` requests one after another (1 stream),
    then ``waves`` waves of ``streams`` requests at once. Returns tokens/s of each."""

    prompt_tokens: int = 128
    out_tokens: int = 128
    serial: int = 3
    streams: int = 64
    waves: int = 2
    timeout_s: float = 300.0

    def describe(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "out_tokens": self.out_tokens,
            "serial_requests": self.serial,
            "streams": self.streams,
            "waves": self.waves,
        }

    async def run(self, url: str, model: str) -> tuple[float, float]:
        # No keep-alive: a connection left idle between waves may be closed by the server
        # (uvicorn's keep-alive timeout, 5 s in vLLM) just as the next wave reuses it, failing
        # that request with a ReadError. A new connection costs far less than a decode.
        limits = httpx.Limits(max_connections=self.streams, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=self.timeout_s, limits=limits) as c:
            await self._one(c, model, 8, 0)  # warm-up
            t0, tokens = time.perf_counter(), 0
            for i in range(self.serial):
                tokens += await self._one(c, model, self.out_tokens, i)
            one = tokens / (time.perf_counter() - t0)
            t0, tokens = time.perf_counter(), 0
            for _ in range(self.waves):
                wave = [self._one(c, model, self.out_tokens, i) for i in range(self.streams)]
                tokens += sum(await asyncio.gather(*wave))
            many = tokens / (time.perf_counter() - t0)
        return one, many

    async def _one(self, client: httpx.AsyncClient, model: str, out: int, seed: int) -> int:
        # token ids, not text: the length is exact whatever the tokenizer (ids < 1000 exist in all)
        prompt = [100 + (seed * 7 + i) % 900 for i in range(self.prompt_tokens)]
        body = {"model": model, "prompt": prompt, "max_tokens": out, "min_tokens": out,
                "ignore_eos": True, "temperature": 0.0}  # fmt: skip
        response = await client.post("/v1/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])
