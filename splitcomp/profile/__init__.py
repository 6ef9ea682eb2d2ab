"""Profiles of device-head and server-tail times per cut and batch size, and the latency model."""

from splitcomp.profile.check import CheckLimits, ProfileCheckError, check_profiles
from splitcomp.profile.latency import (
    CutProfile,
    LatencyBreakdown,
    LatencyModel,
    Profiles,
    ServerLoad,
)
from splitcomp.profile.machine import MachineLoad
from splitcomp.profile.measured import MeasuredProfiles, Measurement
from splitcomp.profile.profiler import get_profiles, profile_plan, resolve_server_device
from splitcomp.profile.timing import pin_to_cores, run_on_device

__all__ = [
    "CheckLimits",
    "CutProfile",
    "LatencyBreakdown",
    "LatencyModel",
    "MachineLoad",
    "MeasuredProfiles",
    "Measurement",
    "ProfileCheckError",
    "Profiles",
    "ServerLoad",
    "check_profiles",
    "get_profiles",
    "pin_to_cores",
    "profile_plan",
    "resolve_server_device",
    "run_on_device",
]
