"""Server-sent events passed through: split into events only to find the first content, the
usage event and ``[DONE]``; no event is parsed as JSON except the usage one."""

from __future__ import annotations

import json
import time

from gateway.usage import Usage

DONE = b"data: [DONE]"
EMPTY = b'"content":""'  # vLLM's first chat chunk carries only the role


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
