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
from collections.abc import Sequence

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
        self._add(rate, t)
        self._last_t = t if self._last_t is None else max(self._last_t, t)

    @abstractmethod
    def _add(self, rate_bps: float, t: float) -> None:
        """Take one measured rate, known at time ``t``, into the estimate."""

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

    def _add(self, rate_bps: float, t: float) -> None:
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

    def _add(self, rate_bps: float, t: float) -> None:
        self._rate = rate_bps if self._rate is None else self.alpha * rate_bps + (1 - self.alpha) * self._rate

    def _value(self) -> float | None:
        return self._rate

    def _clear(self) -> None:
        self._rate = None


def harmonic_mean(rates: Sequence[float]) -> float | None:
    """Harmonic mean of measured rates (None without any); one outage sample pulls it to zero."""
    if not rates:
        return None
    if min(rates) <= 0:
        return 0.0
    return len(rates) / sum(1.0 / r for r in rates)


class HarmonicEstimator(RateEstimator):
    """Harmonic mean of the last ``n`` samples (robust to single high outliers, as in FESTIVE/MPC)."""

    name = "harmonic"

    def __init__(self, n: int = 5, max_age_s: float = 0.5, probe_bytes: int = 16384, fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        if n < 1:
            raise ConfigError(f"harmonic estimator n must be at least 1, got {n}; set estimator.n >= 1.")
        self.n = int(n)
        self._samples: deque[float] = deque(maxlen=self.n)

    def _add(self, rate_bps: float, t: float) -> None:
        self._samples.append(rate_bps)

    def _value(self) -> float | None:
        return harmonic_mean(self._samples)

    def _clear(self) -> None:
        self._samples.clear()


class WindowEstimator(RateEstimator):
    """Harmonic mean of the samples measured in the last ``window_s`` seconds (the newest one
    always counts): a sliding window in time rather than in samples, so a burst of requests
    does not flush the window and a sample from long ago does not linger."""

    name = "window"

    def __init__(self, window_s: float = 2.0, max_age_s: float = 0.5, probe_bytes: int = 16384,
                 fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        if not window_s > 0:
            raise ConfigError(f"window estimator window_s must be positive, got {window_s}; set estimator.window_s > 0.")
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, float]] = deque()  # (time known, rate)

    def _add(self, rate_bps: float, t: float) -> None:
        self._samples.append((t, rate_bps))
        while self._samples[0][0] < t - self.window_s:
            self._samples.popleft()

    def _value(self) -> float | None:
        return harmonic_mean([r for _, r in self._samples])

    def _clear(self) -> None:
        self._samples.clear()


class KalmanEstimator(RateEstimator):
    """A scalar Kalman filter on the rate, for samples that come at irregular times.

    The rate is modelled as a random walk whose standard deviation grows by ``drift`` times the
    rate per square root of a second, and each sample measures it with a standard deviation of
    ``noise`` times the rate (variances relative to the rate, so a fall from 100 to 5 Mbit/s
    leaves no huge absolute variance behind). The gain therefore depends on the time since the
    last sample: samples close together are averaged (like an EWMA), while a sample after a
    pause, when the old estimate says little, all but replaces it (like ``last``)."""

    name = "kalman"

    def __init__(self, drift: float = 1.0, noise: float = 0.3, max_age_s: float = 0.5, probe_bytes: int = 16384,
                 fast_drop: bool = False) -> None:
        super().__init__(max_age_s, probe_bytes, fast_drop)
        if not drift > 0 or not noise > 0:
            raise ConfigError(f"kalman drift and noise must be positive, got {drift} and {noise}; "
                              "set estimator.drift and estimator.noise > 0.")
        self.drift, self.noise = float(drift), float(noise)
        self._rate: float | None = None
        self._relative_variance = 0.0  # of the estimate, over its square
        self._sample_t = 0.0

    def _predicted_variance(self, elapsed_s: float) -> float:
        """The estimate's relative variance ``elapsed_s`` seconds after the previous sample."""
        return self._relative_variance + self.drift ** 2 * max(0.0, elapsed_s)

    def gain(self, elapsed_s: float) -> float:
        """The weight of a new sample taken ``elapsed_s`` seconds after the previous one."""
        predicted = self._predicted_variance(elapsed_s)
        return predicted / (predicted + self.noise ** 2)

    def _add(self, rate_bps: float, t: float) -> None:
        if self._rate is None:
            self._rate, self._relative_variance, self._sample_t = rate_bps, self.noise ** 2, t
            return
        elapsed_s = t - self._sample_t
        gain = self.gain(elapsed_s)
        self._rate += gain * (rate_bps - self._rate)
        self._relative_variance = (1.0 - gain) * self._predicted_variance(elapsed_s)
        self._sample_t = max(self._sample_t, t)

    def _value(self) -> float | None:
        return self._rate

    def _clear(self) -> None:
        self._rate, self._relative_variance = None, 0.0


class OracleEstimator(RateEstimator):
    """Reads the true rate from the uplink trace: ``rate_at(t)``; never stale, never probes."""

    name = "oracle"

    def __init__(self, max_age_s: float = 0.5, probe_bytes: int = 16384) -> None:
        super().__init__(max_age_s, probe_bytes)
        self._trace: Trace | None = None

    def bind(self, uplink: Trace | None) -> None:
        self._trace = uplink

    def _add(self, rate_bps: float, t: float) -> None:
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
