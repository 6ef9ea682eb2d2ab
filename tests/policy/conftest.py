"""Fixtures of the policy tests: hand-made cut profiles and environments.

Four candidates (rtt 10 ms, idle server): full offloading ("input") is fastest above ~40 Mbit/s,
"mid" between ~5 and ~40 Mbit/s, device-only ("output", 80 ms) below ~4 Mbit/s.
"""

from __future__ import annotations

import pytest

from splitcomp.policy import DeviceOnly, EwmaEstimator
from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles
from splitcomp.scenario.arrivals import Periodic
from splitcomp.scenario.trace import Trace
from splitcomp.sim import RunEnv


def toy_candidates() -> list[CutProfile]:
    def cut(index, name, up, head, tail, **flags):
        tails = {1: 0.0} if flags.get("is_device_only") else {1: tail, 8: 4 * tail}
        down = 0 if flags.get("is_device_only") else 40
        return CutProfile(index, name, up, down, {1: head}, tails, **flags)

    return [
        cut(0, "input", 150_000, 0.0, 0.010, is_full_offload=True),
        cut(3, "mid", 20_000, 0.030, 0.006),
        cut(6, "late", 4_000, 0.060, 0.002),
        cut(9, "output", 0, 0.080, 0.0, is_device_only=True),
    ]


def toy_model(candidates: list[CutProfile] | None = None) -> LatencyModel:
    return LatencyModel(Profiles({}, candidates or toy_candidates()), rtt_s=0.01)


def constant_trace(rate_bps: float, duration: float = 100.0) -> Trace:
    return Trace([0.0], [rate_bps], duration)


def toy_env(uplink: Trace, policy=None, n: int = 200, **kw) -> RunEnv:
    candidates = toy_candidates()
    return RunEnv(candidates, toy_model(candidates), policy or DeviceOnly(), EwmaEstimator(), Periodic(0.1), uplink,
                  n_requests=n, **kw)


@pytest.fixture
def candidates() -> list[CutProfile]:
    return toy_candidates()


@pytest.fixture
def model(candidates) -> LatencyModel:
    return toy_model(candidates)


@pytest.fixture
def make_env():
    """``make_env(uplink, policy=None, n=200, **RunEnv fields)`` on the toy profiles."""
    return toy_env


@pytest.fixture
def constant():
    """``constant(rate_bps, duration=100.0)``: a constant-rate trace."""
    return constant_trace
