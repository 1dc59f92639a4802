"""Which measured kernel serves the load seen (``optimize_for: auto``): the rule, on figures
the tuner measured on one H200 for an 8B GPTQ W4A16 variant (Marlin +16 % at 1 stream, Machete
+10 % at 64)."""

from __future__ import annotations

import pytest

from serving.kernel_load import LoadWindow, Rates, advise, best_at, tok_s_at

MACHETE, MARLIN = "MacheteLinearKernel", "MarlinLinearKernel"
H200: Rates = {MARLIN: (310.0, 7943.0), MACHETE: (268.0, 8752.0)}


def test_the_measured_loads_are_the_measured_figures_and_between_them_a_log_log_line() -> None:
    assert tok_s_at(H200[MARLIN], 1) == pytest.approx(310.0)
    assert tok_s_at(H200[MARLIN], 64) == pytest.approx(7943.0)
    assert tok_s_at(H200[MARLIN], 8) == pytest.approx((310.0 * 7943.0) ** 0.5)  # halfway in log
    assert tok_s_at(H200[MARLIN], 0.2) == tok_s_at(H200[MARLIN], 1)  # under one stream: one
    assert tok_s_at(H200[MARLIN], 500) == tok_s_at(H200[MARLIN], 64)  # past 64: the 64 figure


def test_single_streams_switch_to_marlin_and_64_streams_back_to_machete() -> None:
    to_marlin = advise(MACHETE, H200, streams=1.0, min_gain=0.10)
    assert to_marlin is not None and to_marlin.kernel == MARLIN
    assert to_marlin.gain == pytest.approx(310 / 268 - 1)
    to_machete = advise(MARLIN, H200, streams=64.0, min_gain=0.10)
    assert to_machete is not None and to_machete.kernel == MACHETE
    assert to_machete.gain == pytest.approx(8752 / 7943 - 1)
    assert "+10% tokens/s over MarlinLinearKernel at 64.0 streams" in to_machete.describe()


def test_near_the_crossover_neither_kernel_gains_enough_to_switch() -> None:
    for streams in (3.0, 8.0, 12.0, 30.0, 60.0):
        assert advise(MACHETE, H200, streams, 0.10) is None
        assert advise(MARLIN, H200, streams, 0.10) is None
    assert best_at(H200, 8.0) == MARLIN and best_at(H200, 30.0) == MACHETE


def test_the_kernel_already_best_or_unmeasured_or_alone_is_not_switched() -> None:
    assert advise(MARLIN, H200, 1.0, 0.10) is None
    assert advise("ExllamaLinearKernel", H200, 1.0, 0.10) is None
    assert advise(MARLIN, {MARLIN: H200[MARLIN]}, 64.0, 0.10) is None
    assert advise(MACHETE, H200, 1.0, 0.20) is None  # +16 % is under a 20 % bar


def test_the_window_needs_its_span_and_a_request_before_it_has_a_mean() -> None:
    window = LoadWindow()
    for t in range(5):
        window.add(float(t), 0.0)
    assert window.mean(4.0, window_s=4.0) is None  # idle: nothing to follow
    window.add(5.0, 3.0)
    window.add(6.0, 3.0)
    assert window.mean(6.0, window_s=4.0) == pytest.approx((0 + 0 + 0 + 3 + 3) / 5)
    assert window.mean(6.0, window_s=30.0) is None  # the samples span 6 s of 30
    window.clear()
    assert window.mean(6.0, window_s=4.0) is None
