"""Reading just enough of an OpenAI request to route it: ``model`` and ``stream``, parsed once.

Bodies are forwarded as received unless a stream must ask the backend for usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest


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
