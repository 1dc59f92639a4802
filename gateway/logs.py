"""The gateway's log: one line per event, plain text or JSON lines (``--log-format json``).

Plain: ``2026-12-02 11:20:03,512 INFO vLLM smol:w8a8 #0 ready in 88.1 s (pid 4242)``.
JSON: ``{"time": ..., "level": "INFO", "logger": "serving.replica", "message": ...}``, one
object per line, for log shippers. Neither carries a secret: no message is built from a key.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(level: str, style: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``style``, Python's warnings included; health polls (httpx,
    one line each) muted. uvicorn's lines come here too when it is started without its own
    logging configuration (``gateway.cli.main.server_config``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if style == "json" else logging.Formatter(TEXT))
    name = "DEBUG" if level.lower() == "trace" else level.upper()  # trace: uvicorn's own
    logging.basicConfig(level=name, handlers=[handler], force=True)
    logging.captureWarnings(True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
