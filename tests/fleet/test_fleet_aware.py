from types import SimpleNamespace

import pytest

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext
from splitcomp.policy.fleet_aware import FleetAware
from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles
from splitcomp.records import RequestRecord, ServerLoad

CUTS = [CutProfile(0, "input", 1000, 40, {1: 0.0}, {1: 0.005}, is_full_offload=True),
        CutProfile(1, "output", 0, 0, {1: 0.050}, {1: 0.0}, is_device_only=True)]
MODEL = LatencyModel(Profiles({}, CUTS))
SWAMPED = ServerLoad(batch_size=16, queue_s=0.5)


def _ctx(t):
    return DecisionContext(t=t, candidates=CUTS, latency_model=MODEL, rate_estimate_bps=100e6, load=SWAMPED)


def _answer(t, latency=0.02):
    return RequestRecord(0, t, t, 0, "input", latency, server_s=0.005, bytes_up=1100)


def test_a_stale_swamped_report_is_retried_after_a_random_horizon_and_backs_off():
    policy = FleetAware(margin=0.0, retry_s=0.5)
    policy.prepare(SimpleNamespace(seed=3))
    policy.observe(_answer(0.0))  # the answer said: swamped
    assert policy.choose(_ctx(0.2)) == 1  # within the shortest horizon: stays on the device
    assert policy.choose(_ctx(0.8)) == 0  # past the longest: tries the server as if idle
    policy.observe(_answer(0.8))  # the retry's answer: still swamped, so the next horizon doubles
    assert policy.choose(_ctx(0.8 + 0.02 + 0.45)) == 1
    assert policy.choose(_ctx(0.8 + 0.02 + 1.55)) == 0


def test_without_retry_a_stale_report_holds_for_good():
    policy = FleetAware(margin=0.0, retry_s=0.0)
    policy.prepare(SimpleNamespace(seed=3))
    policy.observe(_answer(0.0))
    assert policy.choose(_ctx(100.0)) == 1


def test_devices_draw_different_horizons():
    horizons = set()
    for seed in range(5):
        policy = FleetAware(retry_s=1.0)
        policy.prepare(SimpleNamespace(seed=seed))
        horizons.add(round(policy._horizon_s, 6))
    assert len(horizons) == 5


@pytest.mark.parametrize(("kwargs", "message"), [({"margin": 1.0}, "margin"), ({"retry_s": -1}, "retry_s"),
                                                 ({"max_backoff": -1}, "max_backoff")])
def test_bad_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FleetAware(**kwargs)
