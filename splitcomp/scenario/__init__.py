"""Scenarios: channel traces (real and synthetic) and server-load models."""

from splitcomp.scenario.load import BatchLoad, ClientsLoad, LoadModel, NoLoad, TraceLoad
from splitcomp.scenario.loaders import FORMATS, TraceWarning, detect_format, load_trace, trace_window
from splitcomp.scenario.synthetic import constant, markov, random_walk, square, step
from splitcomp.scenario.trace import Trace

__all__ = [
    "FORMATS",
    "BatchLoad",
    "ClientsLoad",
    "LoadModel",
    "NoLoad",
    "Trace",
    "TraceLoad",
    "TraceWarning",
    "constant",
    "detect_format",
    "load_trace",
    "markov",
    "random_walk",
    "square",
    "step",
    "trace_window",
]
