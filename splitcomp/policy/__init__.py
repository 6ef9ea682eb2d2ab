"""Split policies (which cut per request) and uplink rate estimators."""

from splitcomp.policy.bandit import Bandit
from splitcomp.policy.base import DecisionContext, Policy, resolve_cut
from splitcomp.policy.dynamic import Dynamic
from splitcomp.policy.estimators import (
    EwmaEstimator,
    HarmonicEstimator,
    KalmanEstimator,
    LastEstimator,
    OracleEstimator,
    RateEstimator,
    WindowEstimator,
)
from splitcomp.policy.neurosurgeon import Neurosurgeon
from splitcomp.policy.oracle import BestStatic, Oracle
from splitcomp.policy.simple import DeviceOnly, ServerOnly, Static

__all__ = [
    "Bandit",
    "BestStatic",
    "DecisionContext",
    "DeviceOnly",
    "Dynamic",
    "EwmaEstimator",
    "HarmonicEstimator",
    "KalmanEstimator",
    "LastEstimator",
    "Neurosurgeon",
    "Oracle",
    "OracleEstimator",
    "Policy",
    "RateEstimator",
    "ServerOnly",
    "Static",
    "WindowEstimator",
    "resolve_cut",
]
