"""Uplink data-rate estimators.

Passive estimators learn only from the transfers the runtime really makes: each
``update(nbytes, seconds, t)`` is one measured transfer (bytes over the time it took), made
known at scenario time ``t`` (when the transfer ended). A passive estimate starves when the
policy stops sending (device-only requests send nothing), so every estimate carries an age and
``needs_probe(t)`` says when it is stale; the runtime or simulator then sends a small probe of
``probe_bytes`` and feeds its measurement back through ``update``.

With ``fast_drop`` a measurement below the estimate replaces it at once (the estimate then
builds up again from that sample): a rate that fell shows in the very next decision instead of
after several samples, while a rate that rose is still averaged in. A lagging estimate costs
much more when it is too high (a request sent into a slow link) than when it is too low.

The ``oracle`` estimator reads the true trace instead (an upper bound on what estimation can do).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque

from splitcomp.errors import ConfigError
from splitcomp.scenario.trace import Trace


class RateEstimator(ABC):
    """Estimate of the uplink data rate in bit/s, with an age and a staleness rule."""

    name = "estimator"

    def __init__(self, max_age_s: float = 0.5, probe_bytes: int = 16384, fast_drop: bool = False) -> None:
        if max_age_s <= 0:
            raise ConfigError(f"estimator max_age_s must be positive, got {max_age_s}; set estimator.max_age_s > 0.")
        if probe_bytes <= 0:
            raise ConfigError(f"estimator probe_bytes must be positive, got {probe_bytes}; set estimator.probe_bytes > 0.")
        self.max_age_s = float(max_age_s)
        self.probe_bytes = int(probe_bytes)
        self.fast_drop = bool(fast_drop)
        self._last_t: float | None = None

    def update(self, nbytes: float, seconds: float, t: float) -> None:
        """Feed one transfer of ``nbytes`` that took ``seconds``, known at time ``t``.

        A transfer that carried nothing in its time (an outage) measures a rate of 0."""
        if nbytes <= 0 and seconds <= 0:
            return
        rate = 8.0 * nbytes / seconds if seconds > 0 else float("inf")
        if rate == float("inf"):
            return  # an instantaneous transfer says nothing about the rate
        if self.fast_drop and (current := self._value()) is not None and rate < current:
            self._clear()  # the rate fell: the new sample alone is the estimate
        self._add(rate)
        self._last_t = t if self._last_t is None else max(self._last_t, t)

    @abstractmethod
    def _add(self, rate_bps: float) -> None:
        """Take one measured rate into the estimate."""

    @abstractmethod
    def _value(self) -> float | None:
        """The current estimate, or None before any measurement."""

    def _clear(self) -> None:
        """Forget the samples taken in so far (the time of the last one is kept)."""
        return None

    def estimate(self, t: float) -> float | None:
        """The estimated rate in bit/s at time ``t``, or None when nothing was measured yet."""
        return self._value()

    def age(self, t: float) -> float | None:
        """Seconds since the last measurement, or None when nothing was measured yet."""
        return None if self._last_t is None else max(0.0, t - self._last_t)

    def needs_probe(self, t: float) -> bool:
        """True when the estimate is missing or older than ``max_age_s``."""
        age = self.age(t)
        return age is None or age > self.max_age_s

    def bind(self, uplink: Trace | None) -> None:
        """Give the estimator the true uplink trace; only hindsight estimators use it."""
        return None

    def reset(self) -> None:
        """Forget every measurement (called at the start of each run)."""
        self._last_t = None
        self._clear()


class LastEstimator(RateEstimator):
    """The rate of the last measured transfer."""

    name = "last"

    def __init__(self, max_age_s: float = 0.5, probe_bytes: int = 16384, fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        self._rate: float | None = None

    def _add(self, rate_bps: float) -> None:
        self._rate = rate_bps

    def _value(self) -> float | None:
        return self._rate

    def _clear(self) -> None:
        self._rate = None


class EwmaEstimator(RateEstimator):
    """Exponentially weighted moving average: ``est = alpha * sample + (1 - alpha) * est``."""

    name = "ewma"

    def __init__(self, alpha: float = 0.5, max_age_s: float = 0.5, probe_bytes: int = 16384,
                 fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        if not 0 < alpha <= 1:
            raise ConfigError(f"ewma alpha must be in (0, 1], got {alpha}; set estimator.alpha accordingly.")
        self.alpha = float(alpha)
        self._rate: float | None = None

    def _add(self, rate_bps: float) -> None:
        self._rate = rate_bps if self._rate is None else self.alpha * rate_bps + (1 - self.alpha) * self._rate

    def _value(self) -> float | None:
        return self._rate

    def _clear(self) -> None:
        self._rate = None


class HarmonicEstimator(RateEstimator):
    """Harmonic mean of the last ``n`` samples (robust to single high outliers, as in FESTIVE/MPC)."""

    name = "harmonic"

    def __init__(self, n: int = 5, max_age_s: float = 0.5, probe_bytes: int = 16384, fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        if n < 1:
            raise ConfigError(f"harmonic estimator n must be at least 1, got {n}; set estimator.n >= 1.")
        self.n = int(n)
        self._samples: deque[float] = deque(maxlen=self.n)

    def _add(self, rate_bps: float) -> None:
        self._samples.append(rate_bps)

    def _value(self) -> float | None:
        if not self._samples:
            return None
        if min(self._samples) <= 0:
            return 0.0  # an outage sample pulls the harmonic mean to zero
        return len(self._samples) / sum(1.0 / r for r in self._samples)

    def _clear(self) -> None:
        self._samples.clear()


class OracleEstimator(RateEstimator):
    """Reads the true rate from the uplink trace: ``rate_at(t)``; never stale, never probes."""

    name = "oracle"

    def __init__(self, max_age_s: float = 0.5, probe_bytes: int = 16384) -> None:
        super().__init__(max_age_s, probe_bytes)
        self._trace: Trace | None = None

    def bind(self, uplink: Trace | None) -> None:
        self._trace = uplink

    def _add(self, rate_bps: float) -> None:
        pass

    def _value(self) -> float | None:
        return None

    def estimate(self, t: float) -> float | None:
        return None if self._trace is None else self._trace.rate_at(t)

    def age(self, t: float) -> float | None:
        return None if self._trace is None else 0.0

    def needs_probe(self, t: float) -> bool:
        return False


class InFlight:
    """Transfers the device started that it never saw finish.

    A transfer of ``b`` bytes still open ``s`` seconds after it started means the channel carried
    less than ``8b / s`` bit/s on average since then: an upper bound on the rate that the device
    knows without any new measurement. One abandoned at a deadline ``d`` seconds after it started
    keeps the bound it had then, ``8b / d``. The bounds hold until a transfer completes
    (``clear``); they stop a stale, high estimate from sending request after request into an
    outage (the first stuck transfer caps the estimate of the next)."""

    def __init__(self) -> None:
        self._open: dict[object, tuple[float, float, float]] = {}

    def start(self, key: object, nbytes: float, t: float) -> None:
        self._open[key] = (t, 8.0 * nbytes, math.inf)

    def abandon(self, key: object, nbytes: float, t_start: float, t_end: float) -> None:
        """A transfer of ``nbytes`` from ``t_start`` given up at ``t_end``."""
        self._open[key] = (t_start, 8.0 * nbytes, t_end)

    def finish(self, key: object) -> None:
        self._open.pop(key, None)

    def cap_bps(self, t: float) -> float | None:
        """The tightest bound at time ``t``, or None when nothing is open long enough to tell."""
        caps = [bits / (min(t, end) - t0) for t0, bits, end in self._open.values() if min(t, end) > t0]
        return min(caps) if caps else None

    def clear(self) -> None:
        self._open.clear()


def capped(estimate_bps: float | None, cap_bps: float | None) -> float | None:
    """The estimate, lowered to the in-flight bound when that is tighter."""
    if estimate_bps is None or cap_bps is None:
        return estimate_bps
    return min(estimate_bps, cap_bps)
