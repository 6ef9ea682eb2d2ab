"""Scenarios: channel traces (real and synthetic) and server-load models."""

from splitcomp.scenario.trace import Trace

__all__ = ["Trace"]
