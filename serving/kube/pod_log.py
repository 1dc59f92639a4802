"""A pod's log followed a tail at a time, each line given out once.

The API server keeps no reader's place in a log. Asked with ``timestamps=true`` it starts every
line with the RFC 3339 time (UTC, up to nanoseconds) at which the kubelet took it; the follower
remembers the time of the last line it gave out, and how many lines carried that time, and
gives out only the lines after them. When more lines came between two reads than one tail
holds, the lines in between are lost, and the follower says so in their place.
"""

from __future__ import annotations

import re

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?")
GAP = "[quantgate: lines of the pod's log were missed here: it grew faster than it was read]"


def split(line: str, previous: str) -> tuple[str, str]:
    """(a sortable form of the line's time, the line without it); a line without a time
    gets ``previous``."""
    found = STAMP.match(line)
    if found is None:
        return previous, line
    seconds, fraction = found.group(1), found.group(2) or ""
    return f"{seconds}.{fraction:0<9}", line[found.end() :]


def unstamped(stamped: str) -> str:
    """The log text without the times."""
    return "\n".join(split(line, "")[1] for line in stamped.splitlines())


class LogFollower:
    def __init__(self) -> None:
        self._last = ""  # the time of the last line given out
        self._at_last = 0  # how many lines given out carried that time

    def new_lines(self, stamped: str, asked: int) -> list[str]:
        """The lines of ``stamped`` (a tail of at most ``asked`` lines, with their times) that
        come after those given out before, without their times."""
        tail = stamped.splitlines()
        out: list[str] = []
        when, given_at_last = "", self._at_last
        for i, raw in enumerate(tail):
            when, text = split(raw, when)
            if when < self._last:
                continue
            if when == self._last and given_at_last > 0:  # given out after an earlier read
                given_at_last -= 1
                continue
            if i == 0 and len(tail) >= asked:  # a full tail, all new: lines before it are lost
                out.append(GAP)
            out.append(text)
            self._at_last = self._at_last + 1 if when == self._last else 1
            self._last = when
        return out
