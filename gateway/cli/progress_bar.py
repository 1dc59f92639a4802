"""A progress bar for long builds on a terminal, one line per change elsewhere (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._last = ""

    def update(self, event: dict[str, Any]) -> None:
        line = self._render(event)
        if line == self._last:
            return
        self._last = line
        elapsed = f"{time.monotonic() - self._started:6.0f} s"
        if self._tty:
            self._stream.write(f"\r\033[K{line}  {elapsed}")
        else:
            self._stream.write(f"{line}  {elapsed}\n")
        self._stream.flush()

    def _render(self, event: dict[str, Any]) -> str:
        stage = str(event.get("stage", ""))
        done, total = event.get("layers_done"), event.get("layers_total")
        if not total:
            return f"{stage:<10}"
        filled = self._width * int(done or 0) // int(total)
        bar = "#" * filled + "." * (self._width - filled)
        return f"{stage:<10} [{bar}] {done}/{total} layers"

    def close(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()
