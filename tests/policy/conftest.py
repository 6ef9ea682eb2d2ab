"""Fixtures of the policy tests: environments on the toy profiles (tests/fixtures/toy_profiles.py)."""

from __future__ import annotations

import pytest
from toy_profiles import toy_candidates, toy_model

from splitcomp.policy import DeviceOnly, EwmaEstimator
from splitcomp.profile.latency import CutProfile, LatencyModel
from splitcomp.scenario.arrivals import Periodic
from splitcomp.scenario.trace import Trace
from splitcomp.sim import RunEnv


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
