"""A replica's circuit breaker: ``threshold`` failed requests in a row keep it out of routing
for ``open_s``; after that one request may try it (half-open: the others are kept out while
it runs); one more failure reopens it, a success closes it. The clock is injected
(``time.monotonic`` by default)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("serving.replica")


class Circuit:
    def __init__(
        self,
        label: str,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label  # in log lines
        self._on_change = on_change
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False  # half-open: the one request trying it is in flight

    def admits(self) -> bool:
        """Whether a request may go to it now: closed, or half-open with no trial running."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self._probing)

    def begin(self) -> bool:
        """A request was sent to it; whether it is the trial (half-open)."""
        if self.state != "half-open":
            return False
        self._probing = True
        return True

    def end(self, trial: bool) -> None:
        """A request to it is over (answered, failed or cancelled); if it was the trial, the
        next request may be one."""
        if trial and self._probing:
            self._probing = False
            self._on_change()

    def failure(self, threshold: int, open_s: float) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= threshold:
            if self.state != "open":
                log.warning("%s: circuit opened after %d failed requests in a row; no requests "
                            "for %.0f s", self._label, self._failures, open_s)  # fmt: skip
            self._open_until = self._clock() + open_s
            self._on_change()

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._open_until:
            log.info("%s: circuit closed (a request succeeded)", self._label)
            self._open_until = 0.0
            self._on_change()

    def open_for(self) -> float:
        """Seconds until an open circuit lets one request try again (0: not open)."""
        return max(0.0, self._open_until - self._clock())

    @property
    def state(self) -> str:
        if self._clock() < self._open_until:
            return "open"
        return "half-open" if self._open_until else "closed"
