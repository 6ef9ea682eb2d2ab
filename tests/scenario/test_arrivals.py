import numpy as np
import pytest

from splitcomp.errors import ConfigError
from splitcomp.scenario.arrivals import ClosedLoop, Periodic, Poisson


def test_closed_loop_waits_for_the_answer_and_the_think_time():
    rng = np.random.default_rng(0)
    assert ClosedLoop().next_start(1.0, 1.3, rng) == pytest.approx(1.3)
    assert ClosedLoop(think_s=0.2).next_start(1.0, 1.3, rng) == pytest.approx(1.5)


def test_periodic_ignores_latency():
    rng = np.random.default_rng(0)
    arrivals = Periodic(interval_s=0.1)
    assert arrivals.next_start(2.0, 2.05, rng) == pytest.approx(2.1)
    assert arrivals.next_start(2.0, 9.0, rng) == pytest.approx(2.1)  # a slow request does not delay the camera


def test_poisson_is_seeded_and_has_the_right_mean_gap():
    def starts(seed):
        rng, t, out = np.random.default_rng(seed), 0.0, []
        for _ in range(4000):
            t = Poisson(rate_hz=20.0).next_start(t, t + 1.0, rng)
            out.append(t)
        return np.array(out)

    a, b = starts(1), starts(1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, starts(2))
    assert np.mean(np.diff(a)) == pytest.approx(1 / 20.0, rel=0.08)


@pytest.mark.parametrize("make", [lambda: ClosedLoop(-1), lambda: Periodic(0), lambda: Poisson(-2)])
def test_bad_settings_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()
