"""Following a pod's log by its tail: each line once, in order, and a gap said where lines
were lost."""

from __future__ import annotations

from serving.kube.pod_log import GAP, LogFollower, unstamped


def stamped(*lines: tuple[str, str]) -> str:
    return "".join(f"{when} {text}\n" for when, text in lines)


A = ("2026-12-05T09:00:00.1Z", "loading")
B = ("2026-12-05T09:00:00.123456789Z", "QUANTGATE_PROGRESS {}")
C = ("2026-12-05T09:00:01Z", "layer 1")
D = ("2026-12-05T09:00:01Z", "layer 2")  # the same time as C
E = ("2026-12-05T09:00:01.5Z", "done")


def test_each_line_is_given_out_once_as_the_tail_moves() -> None:
    follower = LogFollower()
    assert follower.new_lines(stamped(A, B), 10) == ["loading", "QUANTGATE_PROGRESS {}"]
    assert follower.new_lines(stamped(A, B), 10) == []
    assert follower.new_lines(stamped(A, B, C), 10) == ["layer 1"]
    assert follower.new_lines(stamped(B, C, D), 10) == ["layer 2"]  # a time shared with C
    assert follower.new_lines(stamped(C, D, E), 3) == ["done"]
    assert follower.new_lines("", 3) == []


def test_fractions_of_any_length_sort_as_times() -> None:
    follower = LogFollower()
    follower.new_lines(stamped(B), 10)  # .123456789 s
    assert follower.new_lines(stamped(A, B), 10) == []  # .1 s is earlier, not later


def test_lines_lost_between_two_reads_are_marked() -> None:
    follower = LogFollower()
    assert follower.new_lines(stamped(A), 2) == ["loading"]
    assert follower.new_lines(stamped(C, E), 2) == [GAP, "layer 1", "done"]
    assert LogFollower().new_lines(stamped(A, B), 2) == [GAP, "loading", "QUANTGATE_PROGRESS {}"]


def test_unstamped_text() -> None:
    assert unstamped(stamped(A, C)) == "loading\nlayer 1"
    assert unstamped("no time here\n") == "no time here"
