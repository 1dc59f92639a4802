"""Perplexity of what a vLLM server serves: the same strided windows as the offline measure
(``serving.worker.perplexity``), each scored by the server itself through its prompt
logprobs (``prompt_logprobs``, a vLLM extension of ``/v1/completions``). For variants vLLM
quantizes as it loads them (FP8, bitsandbytes NF4), this is the quality of what is served;
on a built checkpoint it agrees with the offline measure (docs/quantization.md)."""

from __future__ import annotations

from typing import Any

import httpx
import torch

from serving.worker.perplexity import Scorer

TIMEOUT_S = 300.0


def served_scorer(url: str, model: str) -> Scorer:
    """Scores windows with the server at ``url`` serving ``model``."""
    client = httpx.Client(base_url=url.rstrip("/"), timeout=TIMEOUT_S)

    def score(ids: torch.Tensor, last: int) -> tuple[float, int]:
        prompt = [int(i) for i in ids.tolist()]
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}  # fmt: skip
        answer = client.post("/v1/completions", json=body)
        answer.raise_for_status()
        logprobs: list[dict[str, Any] | None] = answer.json()["choices"][0]["prompt_logprobs"]
        first = max(1, len(prompt) - last)
        nll = 0.0
        for position in range(first, len(prompt)):
            entry = logprobs[position]
            if entry is None or str(prompt[position]) not in entry:
                raise ValueError(f"the server gave no logprob for prompt token {position}")
            nll -= float(entry[str(prompt[position])]["logprob"])
        return nll, len(prompt) - first

    return score
