"""Trace as a step function: lookups at edges, transfers through outages, windows and scaling."""

from __future__ import annotations

import numpy as np
import pytest

from splitcomp.scenario import Trace


def _outage() -> Trace:
    # 1 Mbit/s for 1 s, outage for 2 s, 2 Mbit/s for 2 s; loops every 5 s
    return Trace(np.array([0.0, 1.0, 3.0]), np.array([1e6, 0.0, 2e6]), 5.0, np.array([0.01, 0.02, 0.03]), "o")


def test_rate_at_edges():
    trace = _outage()
    assert trace.rate_at(0.0) == 1e6
    assert trace.rate_at(np.nextafter(1.0, 0)) == 1e6
    assert trace.rate_at(1.0) == 0.0  # a sample starts at its own time
    assert trace.rate_at(4.999) == 2e6
    assert trace.rate_at(5.0) == 1e6  # loops
    assert trace.rate_at(-0.5) == 2e6  # negative times wrap too
    assert trace.rtt_at(3.5) == 0.03
    assert trace.rates_at(np.array([0.0, 1.0, 3.0, 5.0, 8.0])).tolist() == [1e6, 0.0, 2e6, 1e6, 2e6]


def test_transfer_time_waits_out_an_outage():
    trace = _outage()
    # 250 kB = 2 Mbit from t=0.5: 0.5 Mbit by t=1, nothing until 3, 1.5 Mbit more at 2 Mbit/s
    assert trace.transfer_time(250_000, 0.5) == pytest.approx(3.25)
    assert trace.transfer_time(1000, 1.5) == pytest.approx(1.5 + 8000 / 2e6)  # started inside the outage
    assert trace.transfer_time(0, 1.5) == 0.0


def test_transfer_time_loops_and_limits():
    trace = _outage()
    per_loop_bytes = (1e6 + 4e6) / 8
    assert trace.transfer_time(int(per_loop_bytes), 0.0) == pytest.approx(5.0)  # ends exactly at a loop end
    # from t=12 (inside an outage), three loops' worth ends with the last 2 Mbit/s stretch, at t=26
    assert trace.transfer_time(int(3 * per_loop_bytes), 12.0) == pytest.approx(14.0)
    assert trace.transfer_time(250_000, 0.5, max_time=1.0) == float("inf")
    dead = Trace(np.array([0.0]), np.array([0.0]), 5.0)
    assert dead.transfer_time(1, 0.0) == float("inf")


def test_transfer_time_inverts_bits_between():
    rng = np.random.default_rng(3)
    rates = rng.choice([0.0, 1e5, 3e6, 5e7], size=40)
    rates[0] = 1e6
    trace = Trace(np.cumsum(np.concatenate([[0.0], rng.uniform(0.05, 2.0, 39)])), rates, 60.0)
    for t0, nbytes in zip(rng.uniform(0, 200, 30), rng.integers(1, 10**8, 30), strict=True):
        seconds = trace.transfer_time(int(nbytes), float(t0))
        assert np.isfinite(seconds)
        assert trace.bits_between(t0, t0 + seconds) == pytest.approx(8.0 * nbytes, rel=1e-9)


def test_window_speedup_and_metadata():
    trace = Trace(np.array([0.0, 1.0, 3.0]), np.array([1e6, 0.0, 2e6]), 5.0, name="o", format="ghent", skipped_rows=2)
    part = trace.window(start=4.0, duration=3.0, speedup=2.0)
    assert part.times.tolist() == [0.0, 0.5, 1.0]  # [4, 7) crosses the loop at 5 and the outage at 6
    assert part.rates_bps.tolist() == [2e6, 1e6, 0.0]
    assert part.duration == 1.5
    assert (part.format, part.skipped_rows) == ("ghent", 2)
    late = trace.window(start=13.0, duration=4.0)  # starts in the third loop
    assert late.rates_bps.tolist() == [2e6, 1e6, 0.0]


def test_window_keeps_rtts_and_scaled_keeps_time():
    trace = _outage()
    assert trace.window(0.5, 3.0).rtts_s.tolist() == [0.01, 0.02, 0.03]
    half = trace.scaled(0.5)
    assert half.rates_bps.tolist() == [5e5, 0.0, 1e6] and half.duration == 5.0
    assert half.time_weighted_mean_rate_bps == pytest.approx(trace.time_weighted_mean_rate_bps / 2)


@pytest.mark.parametrize(
    ("times", "rates", "duration"),
    [([0.5], [1.0], 2.0), ([0.0, 0.0], [1.0, 1.0], 2.0), ([0.0], [-1.0], 2.0), ([0.0, 1.0], [1.0, 1.0], 1.0)],
)
def test_invalid_step_functions_are_refused(times, rates, duration):
    with pytest.raises(ValueError):
        Trace(np.array(times), np.array(rates), duration)
