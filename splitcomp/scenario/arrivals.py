"""When requests start: request-arrival processes in scenario time.

The first request starts at scenario time 0. After that, ``next_start(prev_start, prev_end, rng)``
gives the start of the next request from the start and end of the previous one, so scenario
time moves through the channel trace as it would for a camera feeding the device:

* ``closed_loop``: the next request starts when the previous one returned (plus ``think_s``);
  how fast time advances depends on the latencies the policy achieves.
* ``periodic``: one request every ``interval_s`` seconds (a camera at a fixed frame rate),
  whatever the latencies; requests may overlap when a latency exceeds the interval.
* ``poisson``: exponential gaps with mean ``1 / rate_hz``, drawn from ``rng``.

Open-loop arrivals (periodic, poisson) do not depend on the latencies, so every policy sees the
same start times for the same seed: the fair setting for per-request comparisons.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from splitcomp.errors import ConfigError


class Arrivals(ABC):
    """A request-arrival process."""

    name = "arrivals"

    @abstractmethod
    def next_start(self, prev_start: float, prev_end: float, rng: np.random.Generator) -> float:
        """Scenario time at which the next request starts."""


class ClosedLoop(Arrivals):
    """The next request when the previous one returns, after ``think_s`` seconds."""

    name = "closed_loop"

    def __init__(self, think_s: float = 0.0) -> None:
        if think_s < 0:
            raise ConfigError(f"closed_loop think_s must be non-negative, got {think_s}; set arrivals.think_s >= 0.")
        self.think_s = float(think_s)

    def next_start(self, prev_start: float, prev_end: float, rng: np.random.Generator) -> float:
        return prev_end + self.think_s


class Periodic(Arrivals):
    """One request every ``interval_s`` seconds, independent of latencies."""

    name = "periodic"

    def __init__(self, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ConfigError(f"periodic interval_s must be positive, got {interval_s}; set arrivals.interval_s > 0.")
        self.interval_s = float(interval_s)

    def next_start(self, prev_start: float, prev_end: float, rng: np.random.Generator) -> float:
        return prev_start + self.interval_s


class Poisson(Arrivals):
    """Poisson arrivals at ``rate_hz`` requests per second (exponential gaps from ``rng``)."""

    name = "poisson"

    def __init__(self, rate_hz: float = 10.0) -> None:
        if rate_hz <= 0:
            raise ConfigError(f"poisson rate_hz must be positive, got {rate_hz}; set arrivals.rate_hz > 0.")
        self.rate_hz = float(rate_hz)

    def next_start(self, prev_start: float, prev_end: float, rng: np.random.Generator) -> float:
        return prev_start + float(rng.exponential(1.0 / self.rate_hz))
