"""Token usage as OpenAI responses report it (``usage``, or ``input_tokens``/``output_tokens``
on ``/v1/responses``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_json(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        prompt = data.get("prompt_tokens") or data.get("input_tokens") or 0  # /v1/responses
        completion = data.get("completion_tokens") or data.get("output_tokens") or 0
        return cls(int(prompt), int(completion))


def usage_from_body(body: bytes) -> Usage | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return Usage.from_json(data.get("usage")) if isinstance(data, dict) else None
