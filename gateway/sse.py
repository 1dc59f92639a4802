"""Server-sent events passed through: split into events only to find the first token, the usage
and the end of the stream; only the event that carries the usage is parsed as JSON.

Two shapes, one watcher each (``proxy.ENDPOINTS`` says which endpoint streams which):

- chat and text completions: ``data: {...}`` events, a usage chunk (``choices: []``), then
  ``data: [DONE]``;
- the Responses API: ``event: <type>`` + ``data: {...}`` events that end with
  ``response.completed`` (or ``response.failed`` / ``response.incomplete``), whose
  ``response.usage`` has ``input_tokens``/``output_tokens``; there is no ``[DONE]``.
"""

from __future__ import annotations

import json
import time

from gateway.errors import sse_error_event, sse_response_error_event
from gateway.usage import Usage

DONE = b"data: [DONE]"
EMPTY = b'"content":""'  # vLLM's first chat chunk carries only the role
ERROR_DATA = (b'data: {"error"', b'data: {"object": "error"', b'data: {"object":"error"')
RESPONSE_ENDS = frozenset({b"response.completed", b"response.failed", b"response.incomplete"})


class StreamWatcher:
    """Passes SSE bytes through, noting the first token, the usage, whether the stream
    reached its end (``done``) and whether the backend reported an error in it (``failed``:
    its message; the client gets the backend's event as it is)."""

    ending = ""  # what a whole stream ends with: named in the error event of one cut short

    def __init__(self, drop_usage_event: bool = False) -> None:
        self.drop_usage_event = drop_usage_event
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.usage: Usage | None = None
        self.done = False
        self.failed: str | None = None
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

    def error_event(self, message: str) -> bytes:
        """An in-band error in this stream's shape, for a stream the backend broke off."""
        raise NotImplementedError

    def _keep(self, event: bytes) -> bool:
        """Note what ``event`` says; whether it goes on to the client."""
        raise NotImplementedError

    def _token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now


class CompletionStream(StreamWatcher):
    """``/v1/chat/completions`` and ``/v1/completions``.

    When the client did not ask for usage, the usage-only event the gateway asked for is
    dropped, so the client sees what it would have seen from OpenAI.
    """

    ending = "[DONE]"

    def error_event(self, message: str) -> bytes:
        return sse_error_event(message)

    def _keep(self, event: bytes) -> bool:
        if event.startswith(DONE):
            self.done = True
            return True
        if event.startswith(ERROR_DATA):  # vLLM's error mid-stream; its [DONE] follows
            self.failed = error_message(json.loads(event.partition(b"data:")[2]))
            return True
        if b'"usage":{' in event or b'"usage": {' in event:
            payload = json.loads(event.partition(b"data:")[2])
            self.usage = Usage.from_json(payload.get("usage")) or self.usage
            if not payload.get("choices"):
                return not self.drop_usage_event
        if (b'"choices":[{' in event or b'"choices": [{' in event) and EMPTY not in event:
            self._token()
        return True


class ResponseStream(StreamWatcher):
    """``/v1/responses``: every event goes on; a ``*.delta`` event is generated text (output,
    reasoning or tool-call arguments); the final event carries the usage."""

    ending = "response.completed"

    def __init__(self, drop_usage_event: bool = False) -> None:
        super().__init__(drop_usage_event)
        self._events = 0  # the next event's sequence_number

    def error_event(self, message: str) -> bytes:
        return sse_response_error_event(message, self._events)

    def _keep(self, event: bytes) -> bool:
        self._events += 1
        kind = event_type(event)
        if kind.endswith(b".delta"):
            self._token()
        elif kind == b"error":  # the backend's own error: the stream's last event
            self.done = True
            self.failed = error_message(json.loads(event.partition(b"data:")[2]))
        elif kind in RESPONSE_ENDS:
            self.done = True
            payload = json.loads(event.partition(b"data:")[2])
            response = payload.get("response") if isinstance(payload, dict) else None
            if isinstance(response, dict):
                self.usage = Usage.from_json(response.get("usage")) or self.usage
                if kind == b"response.failed":
                    self.failed = error_message(response)
        return True


def error_message(payload: object) -> str:
    """The message of an error a backend sent in a stream (OpenAI's ``{"error": {...}}``,
    an ``error`` event's own ``message``, or a failed response's ``error``)."""
    found = payload.get("error", payload) if isinstance(payload, dict) else None
    if isinstance(found, dict) and found.get("message"):
        return str(found["message"])
    return "the backend reported an error"


def event_type(event: bytes) -> bytes:
    """The ``event:`` field of an SSE event (b"" when it has none)."""
    if not event.startswith(b"event:"):
        return b""
    return event.partition(b"\n")[0][6:].strip()
