"""Profiles of device-head and server-tail times per cut and batch size, and the latency model."""

from splitcomp.profile.latency import (
    CutProfile,
    LatencyBreakdown,
    LatencyModel,
    Profiles,
    ServerLoad,
)
from splitcomp.profile.profiler import get_profiles, profile_plan, resolve_server_device
from splitcomp.profile.timing import pin_to_cores, run_on_device

__all__ = [
    "CutProfile",
    "LatencyBreakdown",
    "LatencyModel",
    "Profiles",
    "ServerLoad",
    "get_profiles",
    "pin_to_cores",
    "profile_plan",
    "resolve_server_device",
    "run_on_device",
]
