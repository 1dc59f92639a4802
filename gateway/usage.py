"""Reading just enough of OpenAI requests and responses: routing fields and token usage.

Request bodies are parsed once for ``model``/``stream``; they are forwarded as received unless
a stream must ask the backend for usage. Stream chunks are split into SSE events only to find
the first content, the usage event and ``[DONE]``; no chunk is parsed as JSON except the usage
event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest

DONE = b"data: [DONE]"
EMPTY = b'"content":""'  # vLLM's first chat chunk carries only the role


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


@dataclass(frozen=True)
class RoutedRequest:
    model: str
    stream: bool
    body: bytes  # what goes to the backend
    client_wants_usage: bool
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the parsed body

    def renamed(self, model: str) -> bytes:
        """The body with another model name, for upstreams that serve it under that name."""
        data = json.loads(self.body)
        data["model"] = model
        return json.dumps(data).encode()


def route_fields(raw: bytes, add_usage: bool = True) -> RoutedRequest:
    """Validate the little the gateway needs; make streams report usage to the gateway
    (``add_usage``: the endpoint takes ``stream_options``)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    if not stream or not add_usage:
        return RoutedRequest(model, stream, raw, not add_usage, data)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    wants = bool(options and options.get("include_usage"))
    if wants:
        return RoutedRequest(model, True, raw, True, data)
    data["stream_options"] = {**(options or {}), "include_usage": True}
    return RoutedRequest(model, True, json.dumps(data).encode(), False, data)


def usage_from_body(body: bytes) -> Usage | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return Usage.from_json(data.get("usage")) if isinstance(data, dict) else None


class StreamWatcher:
    """Passes SSE bytes through, noting the first token, usage and ``[DONE]``.

    When the client did not ask for usage, the usage-only event the gateway asked for is
    dropped, so the client sees what it would have seen from OpenAI.
    """

    def __init__(self, started: float, drop_usage_event: bool) -> None:
        self.started = started
        self.drop_usage_event = drop_usage_event
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.usage: Usage | None = None
        self.done = False
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes to send on now; keep a partial trailing event for later."""
        buf = self._pending + chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending = buf
            return b""
        complete, self._pending = buf[: end + 2], buf[end + 2 :]
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            if self._keep(event):
                out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        if event.startswith(DONE):
            self.done = True
            return True
        if b'"usage":{' in event or b'"usage": {' in event:
            payload = json.loads(event.partition(b"data:")[2])
            self.usage = Usage.from_json(payload.get("usage")) or self.usage
            if not payload.get("choices"):
                return not self.drop_usage_event
        if (b'"choices":[{' in event or b'"choices": [{' in event) and EMPTY not in event:
            now = time.perf_counter()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
        return True
