"""Synthetic channels: shapes, bounds, seeds and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from splitcomp.errors import ConfigError
from splitcomp.scenario import constant, markov, random_walk, square, step


def test_constant_and_rtt():
    trace = constant(5e6, duration=30.0, rtt_s=0.02)
    assert trace.rate_at(29.0) == 5e6 and trace.duration == 30.0 and trace.rtt_at(3.0) == 0.02


def test_step_follows_the_list():
    trace = step([[0, 1e6], [2.5, 4e6], [4, 0]], duration=6.0)
    assert [trace.rate_at(t) for t in (0, 2.4, 2.5, 5.9)] == [1e6, 1e6, 4e6, 0.0]


@pytest.mark.parametrize(
    "steps", [[], [[1, 1e6]], [[0, 1e6], [0, 2e6]], [[0, 1e6, 3]], [[0, -1.0]], [[0, "fast"]], [[0, 1e6], [9, 1e6]]]
)
def test_step_rejects_bad_lists(steps):
    with pytest.raises(ConfigError):
        step(steps, duration=6.0)


def test_square_alternates_with_duty():
    trace = square(100e6, 5e6, period_s=10.0, duty=0.3, duration=25.0)
    assert trace.times.tolist() == [0.0, 3.0, 10.0, 13.0, 20.0, 23.0]
    assert trace.rates_bps.tolist() == [100e6, 5e6] * 3
    low_first = square(100e6, 5e6, period_s=10.0, duty=0.3, start_high=False, duration=10.0)
    assert low_first.times.tolist() == [0.0, 7.0] and low_first.rate_at(8.0) == 100e6


def test_random_walk_is_seeded_and_bounded():
    a = random_walk(start_bps=1e7, min_bps=1e6, max_bps=1e8, sigma=1.0, duration=2000.0, seed=1)
    b = random_walk(start_bps=1e7, min_bps=1e6, max_bps=1e8, sigma=1.0, duration=2000.0, seed=1)
    c = random_walk(start_bps=1e7, min_bps=1e6, max_bps=1e8, sigma=1.0, duration=2000.0, seed=2)
    assert np.array_equal(a.rates_bps, b.rates_bps) and not np.array_equal(a.rates_bps, c.rates_bps)
    assert a.rates_bps[0] == pytest.approx(1e7)
    assert a.rates_bps.min() >= 1e6 * (1 - 1e-9) and a.rates_bps.max() <= 1e8 * (1 + 1e-9)
    assert a.rates_bps.max() > 5e7 and a.rates_bps.min() < 2e6  # a strong walk visits both ends
    assert len(a.times) == 2000


def test_markov_is_seeded_and_has_the_right_sojourns():
    a = markov(good_bps=5e7, bad_bps=1e6, mean_good_s=8.0, mean_bad_s=2.0, duration=20000.0, seed=4)
    b = markov(good_bps=5e7, bad_bps=1e6, mean_good_s=8.0, mean_bad_s=2.0, duration=20000.0, seed=4)
    c = markov(good_bps=5e7, bad_bps=1e6, mean_good_s=8.0, mean_bad_s=2.0, duration=20000.0, seed=5)
    assert np.array_equal(a.times, b.times) and not np.array_equal(a.times, c.times)
    assert set(a.rates_bps.tolist()) == {5e7, 1e6}
    assert np.all(a.rates_bps[1:] != a.rates_bps[:-1])  # states alternate
    widths = np.diff(np.append(a.times, a.duration))[:-1]
    good = a.rates_bps[:-1] == 5e7
    assert widths[good].mean() == pytest.approx(8.0, rel=0.15)
    assert widths[~good].mean() == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (constant, {"rate_bps": -1.0}),
        (constant, {"rate_bps": 1e6, "duration": 0.0}),
        (constant, {"rate_bps": 1e6, "rtt_s": -0.1}),
        (square, {"high_bps": 1e6, "low_bps": 1e5, "period_s": 0.0}),
        (square, {"high_bps": 1e6, "low_bps": 1e5, "period_s": 1.0, "duty": 1.0}),
        (random_walk, {"min_bps": 1e7, "start_bps": 1e6}),
        (random_walk, {"sigma": -1.0}),
        (markov, {"mean_bad_s": 0.0}),
        (markov, {"bad_bps": float("nan")}),
    ],
)
def test_bad_arguments_are_config_errors(make, kwargs):
    with pytest.raises(ConfigError):
        make(**kwargs)
