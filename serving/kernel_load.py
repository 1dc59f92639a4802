"""Which measured kernel serves the load a variant sees (``serve.optimize_for: auto``).

The tuner measures every kernel at 1 and at 64 concurrent streams (``serving.tuner``). Between
the two, tokens/s is taken as a straight line in log-log space: at ``c`` streams per replica
(``1 <= c <= 64``), ``tok_s(c) = tok_s_1 ** (1 - a) * tok_s_64 ** a`` with
``a = log(c) / log(64)``, so one kernel's ratio to another moves smoothly from its ratio at one
stream to its ratio at 64. A load below one stream is a single-stream load; above 64 the
figures at 64 stand.

The load is the mean number of requests in flight per ready replica over the last
``window_s``, sampled every second. A variant switches only when another kernel is expected
to be at least ``min_gain`` faster at that load than the one serving, and not within ``hold_s``
of its last switch, so a load near the crossover does not make it flip back and forth.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

MEASURED_STREAMS = 64  # the tuner's second load (serving.decode_bench)

Rates = dict[str, tuple[float, float]]  # kernel -> (tok/s at 1 stream, tok/s at 64)


def tok_s_at(rates: tuple[float, float], streams: float) -> float:
    """Tokens/s at ``streams`` concurrent streams, from the two measured loads."""
    one, many = (max(r, 1e-9) for r in rates)
    a = math.log(min(max(streams, 1.0), MEASURED_STREAMS)) / math.log(MEASURED_STREAMS)
    return float(one ** (1 - a) * many**a)


@dataclass(frozen=True)
class Advice:
    """Switch from ``current`` to ``kernel``: expected ``gain`` (0.16 = 16 % more tokens/s)
    at ``streams`` per replica."""

    current: str
    kernel: str
    streams: float
    gain: float

    def describe(self) -> str:
        return (
            f"{self.kernel} expected {self.gain:+.0%} tokens/s over {self.current} at "
            f"{self.streams:.1f} streams per replica"
        )


def best_at(rates: Rates, streams: float) -> str:
    """The kernel with the most expected tokens/s at ``streams`` (ties: name order)."""
    if not rates:
        raise ValueError("no kernel was measured")
    return max(sorted(rates), key=lambda k: tok_s_at(rates[k], streams))


def advise(current: str, rates: Rates, streams: float, min_gain: float) -> Advice | None:
    """A switch worth making at ``streams``, or None: the best kernel there is ``current``,
    or beats it by less than ``min_gain``, or ``current`` was not measured."""
    if current not in rates or len(rates) < 2:
        return None
    best = best_at(rates, streams)
    gain = tok_s_at(rates[best], streams) / tok_s_at(rates[current], streams) - 1
    if best == current or gain < min_gain:
        return None
    return Advice(current, best, streams, gain)


class LoadWindow:
    """Samples of requests in flight per ready replica; their mean over a trailing window."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, streams: float) -> None:
        self._samples.append((now, streams))

    def clear(self) -> None:
        """Forget the samples (a switch: the new replicas' load is counted afresh)."""
        self._samples.clear()

    def mean(self, now: float, window_s: float) -> float | None:
        """Mean over the last ``window_s``; None until the samples span it, or when no
        request was in flight in it (nothing to follow)."""
        while self._samples and now - self._samples[0][0] > window_s:
            self._samples.popleft()
        if not self._samples or now - self._samples[0][0] < window_s * 0.9:
            return None
        values = [s for _, s in self._samples]
        return sum(values) / len(values) if any(values) else None
