"""Synthetic channels: seeded generators that return a :class:`Trace`.

Every generator takes ``duration`` (seconds; the trace loops past it) and ``seed`` so configs can
swap one for another; the deterministic ones accept the seed and ignore it. ``rtt_s`` (optional)
gives the trace a constant RTT. All rates are bit/s. Bad arguments raise :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.scenario.trace import Trace, time_value_pairs

_MIN_SOJOURN_S = 1e-3  # Markov sojourns are at least 1 ms so sample times stay strictly increasing


def constant(rate_bps: float, duration: float = 60.0, seed: int | None = None, rtt_s: float | None = None) -> Trace:
    """A channel at one rate for the whole run."""
    _check_duration(duration)
    _check_rate("rate_bps", rate_bps)
    return _trace([0.0], [rate_bps], duration, rtt_s, f"constant({rate_bps:g}bps)")


def step(
    steps: Iterable[Sequence[float]], duration: float = 60.0, seed: int | None = None, rtt_s: float | None = None
) -> Trace:
    """A rate that changes at given times: ``steps`` is a list of ``(t_s, rate_bps)``, the first at t = 0."""
    _check_duration(duration)
    times, rates = time_value_pairs(steps, "channel.steps", "rate_bps")
    if times[0] != 0 or np.any(np.diff(times) <= 0):
        raise ConfigError(f"channel.steps times must start at 0 and strictly increase, got {times.tolist()}")
    if not duration > times[-1]:
        raise ConfigError(f"channel.duration ({duration:g} s) must be after the last step ({times[-1]:g} s)")
    for rate in rates:
        _check_rate("a step rate", rate)
    return _trace(times, rates, duration, rtt_s, f"step({len(times)})")


def square(
    high_bps: float,
    low_bps: float,
    period_s: float,
    duration: float = 600.0,
    duty: float = 0.5,
    start_high: bool = True,
    seed: int | None = None,
    rtt_s: float | None = None,
) -> Trace:
    """A square wave: ``high_bps`` for ``duty * period_s``, then ``low_bps`` for the rest of the period."""
    _check_duration(duration)
    _check_rate("high_bps", high_bps)
    _check_rate("low_bps", low_bps)
    if not period_s > 0:
        raise ConfigError(f"channel.period_s must be positive, got {period_s!r}")
    if not 0 < duty < 1:
        raise ConfigError(f"channel.duty must be strictly between 0 and 1, got {duty!r}")
    first, second = (high_bps, low_bps) if start_high else (low_bps, high_bps)
    first_s = duty * period_s if start_high else (1 - duty) * period_s
    periods = np.arange(int(np.ceil(duration / period_s)))
    times = np.column_stack([periods * period_s, periods * period_s + first_s]).ravel()
    rates = np.tile([first, second], len(periods))
    keep = times < duration
    return _trace(times[keep], rates[keep], duration, rtt_s, f"square({high_bps:g}/{low_bps:g}bps,{period_s:g}s)")


def random_walk(
    start_bps: float = 20e6,
    min_bps: float = 1e6,
    max_bps: float = 100e6,
    sigma: float = 0.2,
    step_s: float = 1.0,
    duration: float = 600.0,
    seed: int | None = 0,
    rtt_s: float | None = None,
) -> Trace:
    """A random walk in log-rate: each ``step_s`` the log of the rate moves by N(0, ``sigma``),
    reflected at ``min_bps`` and ``max_bps`` (so rates change by similar factors at any level)."""
    _check_duration(duration)
    if not 0 < min_bps <= start_bps <= max_bps:
        raise ConfigError(f"need 0 < min_bps <= start_bps <= max_bps, got {min_bps:g}, {start_bps:g}, {max_bps:g}")
    if not sigma >= 0:
        raise ConfigError(f"channel.sigma must be >= 0, got {sigma!r}")
    if not step_s > 0:
        raise ConfigError(f"channel.step_s must be positive, got {step_s!r}")
    times = np.arange(0.0, duration, step_s)
    rng = np.random.default_rng(seed)
    moves = np.concatenate([[0.0], rng.normal(0.0, sigma, len(times) - 1)])
    free = np.log(start_bps) + np.cumsum(moves)
    lo, hi = np.log(min_bps), np.log(max_bps)
    if hi > lo:  # fold the free walk into [lo, hi]: a walk reflected at both bounds
        folded = np.mod(free - lo, 2 * (hi - lo))
        free = lo + (hi - lo) - np.abs(folded - (hi - lo))
    else:
        free = np.full_like(free, lo)
    return _trace(times, np.exp(free), duration, rtt_s, f"random_walk(seed={seed})")


def markov(
    good_bps: float = 50e6,
    bad_bps: float = 2e6,
    mean_good_s: float = 10.0,
    mean_bad_s: float = 3.0,
    duration: float = 600.0,
    seed: int | None = 0,
    rtt_s: float | None = None,
) -> Trace:
    """A two-state (Gilbert-Elliott) channel: ``good_bps`` and ``bad_bps`` alternate, each state
    lasting an exponential time with mean ``mean_good_s`` / ``mean_bad_s``. The first state is
    drawn from the stationary distribution."""
    _check_duration(duration)
    _check_rate("good_bps", good_bps)
    _check_rate("bad_bps", bad_bps)
    if not (mean_good_s > 0 and mean_bad_s > 0):
        raise ConfigError(f"mean sojourn times must be positive, got {mean_good_s!r} and {mean_bad_s!r}")
    rng = np.random.default_rng(seed)
    start_good = rng.random() < mean_good_s / (mean_good_s + mean_bad_s)
    means = np.array([mean_good_s, mean_bad_s] if start_good else [mean_bad_s, mean_good_s])
    n = 2 * int(np.ceil(duration / means.sum())) + 2
    while True:  # enough sojourns to pass `duration` (almost always the first draw)
        sojourns = np.maximum(rng.exponential(np.tile(means, n // 2 + 1)), _MIN_SOJOURN_S)
        ends = np.cumsum(sojourns)
        if ends[-1] >= duration:
            break
        n *= 2
    times = np.concatenate([[0.0], ends[ends < duration]])
    state_rates = [good_bps, bad_bps] if start_good else [bad_bps, good_bps]
    rates = np.array(state_rates)[np.arange(len(times)) % 2]
    return _trace(times, rates, duration, rtt_s, f"markov(seed={seed})")


def _check_duration(duration: float) -> None:
    if not duration > 0:
        raise ConfigError(f"channel.duration must be positive, got {duration!r}")


def _check_rate(what: str, rate: float) -> None:
    if not (np.isfinite(rate) and rate >= 0):
        raise ConfigError(f"{what} must be a finite rate >= 0 in bit/s, got {rate!r}")


def _trace(times, rates, duration: float, rtt_s: float | None, name: str) -> Trace:
    times = np.asarray(times, dtype=float)
    if rtt_s is not None and not rtt_s >= 0:
        raise ConfigError(f"channel.rtt_s must be >= 0 seconds or null, got {rtt_s!r}")
    rtts = None if rtt_s is None else np.full(len(times), float(rtt_s))
    return Trace(times=times, rates_bps=np.asarray(rates, dtype=float), duration=duration, rtts_s=rtts, name=name)
