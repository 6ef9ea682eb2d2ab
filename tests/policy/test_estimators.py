import pytest

from splitcomp.errors import ConfigError
from splitcomp.policy.estimators import (
    EwmaEstimator,
    HarmonicEstimator,
    InFlight,
    KalmanEstimator,
    LastEstimator,
    OracleEstimator,
    WindowEstimator,
    capped,
)
from splitcomp.scenario.trace import Trace


def feed(est, rates_bps, t0=0.0):
    """One transfer per rate, 1 s apart; each of 1 MB."""
    for i, rate in enumerate(rates_bps):
        est.update(1e6, 8e6 / rate, t0 + i)


def test_last_keeps_the_last_sample():
    est = LastEstimator()
    feed(est, [10e6, 40e6, 20e6])
    assert est.estimate(3.0) == pytest.approx(20e6)


def test_ewma_weights_the_newest_sample_by_alpha():
    est = EwmaEstimator(alpha=0.25)
    feed(est, [10e6, 50e6])
    assert est.estimate(2.0) == pytest.approx(0.25 * 50e6 + 0.75 * 10e6)


def test_harmonic_mean_of_the_last_n():
    est = HarmonicEstimator(n=2)
    feed(est, [1e6, 10e6, 40e6])
    assert est.estimate(3.0) == pytest.approx(2 / (1 / 10e6 + 1 / 40e6))


def test_an_outage_sample_measures_zero():
    for est in (LastEstimator(), HarmonicEstimator(n=3), WindowEstimator(window_s=5.0)):
        feed(est, [10e6])
        est.update(0, 1.0, 2.0)  # nothing got through in a second
        assert est.estimate(2.0) == 0.0


def test_age_and_staleness_trigger_a_probe():
    est = EwmaEstimator(max_age_s=0.5)
    assert est.estimate(0.0) is None and est.age(0.0) is None and est.needs_probe(0.0)
    est.update(16384, 0.01, t=1.0)
    assert est.age(1.2) == pytest.approx(0.2)
    assert not est.needs_probe(1.4)
    assert est.needs_probe(1.6)
    est.reset()
    assert est.estimate(2.0) is None and est.needs_probe(2.0)


def test_oracle_estimator_reads_the_trace_and_never_probes():
    est = OracleEstimator()
    est.bind(Trace([0.0, 5.0], [10e6, 2e6], 10.0))
    assert est.estimate(1.0) == 10e6 and est.estimate(6.0) == 2e6
    assert not est.needs_probe(100.0)


def test_open_transfers_cap_the_estimate():
    flight = InFlight()
    flight.start("a", 1e6, t=0.0)  # 8 Mbit
    assert flight.cap_bps(0.0) is None
    assert flight.cap_bps(2.0) == pytest.approx(4e6)
    assert capped(50e6, flight.cap_bps(2.0)) == pytest.approx(4e6)
    assert capped(1e6, flight.cap_bps(2.0)) == 1e6
    flight.finish("a")
    assert flight.cap_bps(3.0) is None


def test_an_abandoned_transfer_keeps_the_bound_it_had_until_one_completes():
    flight = InFlight()
    flight.abandon("a", 1e6, t_start=0.0, t_end=2.0)  # 8 Mbit not through in 2 s
    assert flight.cap_bps(1.0) == pytest.approx(8e6)
    assert flight.cap_bps(2.0) == flight.cap_bps(60.0) == pytest.approx(4e6)
    flight.clear()
    assert flight.cap_bps(61.0) is None


@pytest.mark.parametrize("make", [
    lambda: EwmaEstimator(alpha=0.0),
    lambda: HarmonicEstimator(n=0),
    lambda: LastEstimator(max_age_s=0),
    lambda: LastEstimator(probe_bytes=0),
    lambda: WindowEstimator(window_s=0),
    lambda: KalmanEstimator(drift=0),
    lambda: KalmanEstimator(noise=-1),
])
def test_bad_settings_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize("make", [lambda: EwmaEstimator(alpha=0.3, fast_drop=True),
                                  lambda: HarmonicEstimator(n=5, fast_drop=True)])
def test_fast_drop_follows_a_fall_at_once_and_a_rise_gradually(make):
    """100 -> 5 Mbit/s: the first slow transfer is the estimate (no 50, 27, 16, ... lag); back at
    100 Mbit/s the estimate climbs over several samples."""
    est = make()
    for t in range(5):
        est.update(125_000, 0.01, t)  # 100 Mbit/s
    est.update(6_250, 0.01, 5)  # 5 Mbit/s
    assert est.estimate(5) == pytest.approx(5e6)
    est.update(125_000, 0.01, 6)
    assert 5e6 < est.estimate(6) < 60e6


def test_without_fast_drop_a_fall_lags():
    est = EwmaEstimator(alpha=0.5)
    for t in range(5):
        est.update(125_000, 0.01, t)
    est.update(6_250, 0.01, 5)
    assert est.estimate(5) == pytest.approx(52.5e6)


def test_window_keeps_only_the_samples_of_its_last_seconds():
    est = WindowEstimator(window_s=1.0)
    est.update(1e6, 8e6 / 100e6, t=0.0)  # 100 Mbit/s, long gone by t = 2
    est.update(1e6, 8e6 / 10e6, t=1.5)
    est.update(1e6, 8e6 / 40e6, t=2.0)
    assert est.estimate(2.0) == pytest.approx(2 / (1 / 10e6 + 1 / 40e6))
    est.update(1e6, 8e6 / 20e6, t=5.0)  # after a pause only the newest sample is left
    assert est.estimate(5.0) == pytest.approx(20e6)


def test_window_holds_an_outage_until_it_leaves_the_window():
    est = WindowEstimator(window_s=1.0)
    est.update(1e6, 8e6 / 50e6, t=0.0)
    est.update(0, 0.5, t=0.6)  # an outage: nothing through in half a second
    est.update(1e6, 8e6 / 50e6, t=1.0)
    assert est.estimate(1.0) == 0.0  # the outage is still in the window
    est.update(1e6, 8e6 / 50e6, t=1.7)
    assert est.estimate(1.7) == pytest.approx(50e6)


def test_kalman_averages_close_samples_and_follows_one_after_a_pause():
    est = KalmanEstimator(drift=1.0, noise=0.3)
    for i in range(5):
        est.update(1e6, 8e6 / 100e6, t=0.01 * i)
    est.update(1e6, 8e6 / 50e6, t=0.05)  # 10 ms after the last: one sample among several, weighed lightly
    assert 75e6 < est.estimate(0.05) < 100e6
    est.update(1e6, 8e6 / 10e6, t=5.0)  # 5 s later the old estimate says little: the new sample rules
    assert 10e6 < est.estimate(5.0) < 12e6
    assert est.gain(0.0) < est.gain(0.1) < est.gain(1.0) < 1.0


def test_kalman_gain_does_not_depend_on_the_scale_of_the_rate():
    slow, fast = KalmanEstimator(), KalmanEstimator()
    for i, rate in enumerate([1e6, 2e6, 1e6]):
        slow.update(rate / 8, 1.0, t=0.2 * i)
        fast.update(100 * rate / 8, 1.0, t=0.2 * i)
    assert fast.estimate(0.4) == pytest.approx(100 * slow.estimate(0.4))


def test_kalman_through_an_outage_and_back():
    """50 Mbit/s, one outage sample, then 50 Mbit/s again: the outage drags the estimate far down
    at once (a second after the last sample it carries most of the weight) and the recovery is as
    quick; with fast drop the outage is the estimate outright."""
    for fast_drop, ceiling in ((False, 15e6), (True, 0.0)):
        est = KalmanEstimator(fast_drop=fast_drop)
        for t in range(3):
            est.update(1e6, 8e6 / 50e6, t)
        est.update(0, 1.0, t=4.0)
        assert est.estimate(4.0) <= ceiling
        est.update(1e6, 8e6 / 50e6, t=5.0)
        assert est.estimate(5.0) > 35e6
