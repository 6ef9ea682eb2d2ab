"""The new estimators inside the request loop (simulator) on a hand-made trace with an outage:
100 Mbit/s, dead from 3 s to 5 s, 100 Mbit/s again (toy profiles: full offloading wins at
100 Mbit/s, device-only during the outage)."""

import dataclasses

import pytest

from splitcomp.policy import Dynamic, KalmanEstimator, WindowEstimator
from splitcomp.scenario.trace import Trace
from splitcomp.sim import simulate_env

OUTAGE = (3.0, 5.0)


def outage_trace() -> Trace:
    return Trace([0.0, OUTAGE[0], OUTAGE[1]], [100e6, 0.0, 100e6], 10.0)


@pytest.mark.parametrize("make", [lambda: WindowEstimator(window_s=1.0, max_age_s=0.25),
                                  lambda: KalmanEstimator(max_age_s=0.25)])
def test_dynamic_leaves_the_link_in_an_outage_and_returns_after_it(make_env, make):
    stats: dict = {}
    env = dataclasses.replace(make_env(outage_trace(), Dynamic(), n=100, timeout_s=1.0), estimator=make())
    records = simulate_env(env, stats=stats)
    before = [r for r in records if r.t_start < OUTAGE[0] - 0.2]
    inside = [r for r in records if OUTAGE[0] + 0.3 < r.t_start < OUTAGE[1]]
    after = [r for r in records if r.t_start > OUTAGE[1] + 1.0]
    assert before and inside and after
    assert all(r.cut_name == "input" for r in before)
    # the first upload into the outage is given up early (far below the 1 s deadline) ...
    given_up = [r for r in records if r.fallback]
    assert 1 <= len(given_up) <= 2 and all(r.uplink_s < 0.2 for r in given_up)
    # ... and from then on nothing is sent into the dead link, each request runs on the device
    assert all(r.cut_name == "output" and not r.fallback for r in inside)
    assert max(r.latency_s for r in inside) < 0.3
    # probes find the link back: offloading again within a second of its return
    assert all(r.cut_name == "input" for r in after)
    assert stats["probes"] >= 3
