"""A channel trace: data rate (and optionally RTT) over time, as a step function.

Sample ``i`` holds from ``times[i]`` until ``times[i + 1]``; the last sample holds until
``duration``. Past ``duration`` the trace loops, as mahimahi replays its traces, so a run is
never left without a rate. Rates are bit/s, times and RTTs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trace:
    times: np.ndarray
    rates_bps: np.ndarray
    duration: float
    rtts_s: np.ndarray | None = None
    name: str = "trace"

    def __post_init__(self) -> None:
        times = np.asarray(self.times, dtype=float)
        rates = np.asarray(self.rates_bps, dtype=float)
        if times.ndim != 1 or times.shape != rates.shape or len(times) == 0:
            raise ValueError(f"trace {self.name!r}: times and rates must be equal-length, non-empty 1-D arrays")
        if times[0] != 0.0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"trace {self.name!r}: times must start at 0 and strictly increase")
        if np.any(~np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError(f"trace {self.name!r}: rates must be finite and non-negative")
        if not self.duration > times[-1]:
            raise ValueError(f"trace {self.name!r}: duration must exceed the last sample time")
        if self.rtts_s is not None:
            rtts = np.asarray(self.rtts_s, dtype=float)
            if rtts.shape != times.shape:
                raise ValueError(f"trace {self.name!r}: rtts_s must have one value per sample")
            object.__setattr__(self, "rtts_s", rtts)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "rates_bps", rates)
        object.__setattr__(self, "duration", float(self.duration))

    # --- reading the trace ---------------------------------------------------------------
    @property
    def mean_rate_bps(self) -> float:
        """Plain (unweighted) mean over the samples."""
        return float(np.mean(self.rates_bps))

    @property
    def time_weighted_mean_rate_bps(self) -> float:
        """Mean rate over time: what a long transfer sees on average."""
        return float(np.sum(self._widths() * self.rates_bps) / self.duration)

    def _widths(self) -> np.ndarray:
        return np.diff(np.append(self.times, self.duration))

    def _index(self, t: float) -> int:
        return int(np.searchsorted(self.times, t % self.duration, side="right") - 1)

    def rate_at(self, t: float) -> float:
        """Data rate in bit/s at scenario time ``t`` (looping past the end)."""
        return float(self.rates_bps[self._index(t)])

    def rtt_at(self, t: float) -> float | None:
        """RTT in seconds at time ``t``, or None when the trace has no RTT."""
        return None if self.rtts_s is None else float(self.rtts_s[self._index(t)])

    def bits_between(self, t0: float, t1: float) -> float:
        """Bits the channel can carry between times ``t0`` and ``t1`` (integral of the rate)."""
        return self._cumulative_bits(t1) - self._cumulative_bits(t0)

    def _cumulative_bits(self, t: float) -> float:
        bits_per_loop = float(np.sum(self._widths() * self.rates_bps))
        loops, rest = divmod(t, self.duration)
        i = self._index(rest)
        before = float(np.sum(self._widths()[:i] * self.rates_bps[:i]))
        return loops * bits_per_loop + before + (rest - self.times[i]) * self.rates_bps[i]

    def transfer_time(self, nbytes: int, t0: float, max_time: float = float("inf")) -> float:
        """Seconds needed to send ``nbytes`` starting at ``t0`` while the rate follows the trace.

        Outages (zero-rate samples) are waited out. Returns ``inf`` when the trace never carries
        the bits (an all-zero trace) or when more than ``max_time`` would be needed.
        """
        bits = 8.0 * nbytes
        if bits <= 0:
            return 0.0
        bits_per_loop = float(np.sum(self._widths() * self.rates_bps))
        if bits_per_loop <= 0:
            return float("inf")
        t = t0
        while bits > 0:
            rate = self.rate_at(t)
            i = self._index(t)
            seg_end_in_loop = self.times[i + 1] if i + 1 < len(self.times) else self.duration
            seg_left = seg_end_in_loop - (t % self.duration)
            if seg_left <= 1e-12:  # float edge: step into the next sample
                seg_left = 1e-9
            if rate * seg_left >= bits:
                t += bits / rate
                bits = 0.0
            else:
                bits -= rate * seg_left
                t += seg_left
            if t - t0 > max_time:
                return float("inf")
        return t - t0

    # --- reshaping the trace ----------------------------------------------------------------
    def window(self, start: float = 0.0, duration: float | None = None, speedup: float = 1.0) -> Trace:
        """The part of the trace from ``start`` for ``duration`` seconds (looping if needed),
        with time compressed by ``speedup`` (rates are kept, so a 10-minute trace replays in one)."""
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        if start < 0:
            raise ValueError("window start must be non-negative")
        duration = self.duration - (start % self.duration) if duration is None else float(duration)
        if duration <= 0:
            raise ValueError("window duration must be positive")
        # sample boundaries inside [start, start + duration), unrolled over loops
        loops = int(np.ceil((start + duration) / self.duration)) + 1
        offsets = np.concatenate([self.times + k * self.duration for k in range(loops)])
        inside = offsets[(offsets > start) & (offsets < start + duration)]
        starts = np.concatenate([[start], inside])
        rates = np.array([self.rate_at(t) for t in starts])
        rtts = None if self.rtts_s is None else np.array([self.rtt_at(t) for t in starts])
        return Trace(
            times=(starts - start) / speedup,
            rates_bps=rates,
            duration=duration / speedup,
            rtts_s=rtts,
            name=f"{self.name}[{start:g}+{duration:g}s x{speedup:g}]",
        )

    def scaled(self, factor: float) -> Trace:
        """The same trace with every rate multiplied by ``factor``."""
        return Trace(self.times, self.rates_bps * factor, self.duration, self.rtts_s, f"{self.name}*{factor:g}")
