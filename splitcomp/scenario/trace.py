"""A channel trace: data rate (and optionally RTT) over time, as a step function.

Sample ``i`` holds from ``times[i]`` until ``times[i + 1]``; the last sample holds until
``duration``. Past ``duration`` the trace loops, as mahimahi replays its traces, so a run is
never left without a rate. Rates are bit/s, times and RTTs seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from splitcomp.errors import ConfigError


@dataclass(frozen=True)
class Trace:
    """A data-rate step function over scenario time.

    ``format``, ``source`` and ``skipped_rows`` describe where a loaded trace came from (the
    reader that parsed it, the file, and how many malformed rows it dropped); they are carried
    through :meth:`window` and :meth:`scaled` and are empty for synthetic traces.
    """

    times: np.ndarray
    rates_bps: np.ndarray
    duration: float
    rtts_s: np.ndarray | None = None
    name: str = "trace"
    format: str = ""
    source: str = ""
    skipped_rows: int = 0

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
            if np.any(~np.isfinite(rtts)) or np.any(rtts < 0):
                raise ValueError(f"trace {self.name!r}: rtts_s must be finite and non-negative")
            object.__setattr__(self, "rtts_s", rtts)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "rates_bps", rates)
        object.__setattr__(self, "duration", float(self.duration))
        # bits carried from 0 to each sample boundary: makes bits_between/transfer_time O(log n)
        widths = np.diff(np.append(times, self.duration))
        object.__setattr__(self, "_cum_bits", np.concatenate([[0.0], np.cumsum(widths * rates)]))

    # --- reading the trace ---------------------------------------------------------------
    @property
    def mean_rate_bps(self) -> float:
        """Plain (unweighted) mean over the samples."""
        return float(np.mean(self.rates_bps))

    @property
    def time_weighted_mean_rate_bps(self) -> float:
        """Mean rate over time: what a long transfer sees on average."""
        return float(self._cum_bits[-1] / self.duration)

    def _index(self, t: float) -> int:
        return int(np.searchsorted(self.times, t % self.duration, side="right") - 1)

    def rate_at(self, t: float) -> float:
        """Data rate in bit/s at scenario time ``t`` (looping past the end)."""
        return float(self.rates_bps[self._index(t)])

    def rates_at(self, t: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`rate_at` for an array of times."""
        idx = np.searchsorted(self.times, np.asarray(t, dtype=float) % self.duration, side="right") - 1
        return self.rates_bps[idx]

    def rtt_at(self, t: float) -> float | None:
        """RTT in seconds at time ``t``, or None when the trace has no RTT."""
        return None if self.rtts_s is None else float(self.rtts_s[self._index(t)])

    def bits_between(self, t0: float, t1: float) -> float:
        """Bits the channel can carry between times ``t0`` and ``t1`` (integral of the rate)."""
        return self._cumulative_bits(t1) - self._cumulative_bits(t0)

    def _cumulative_bits(self, t: float) -> float:
        loops, rest = divmod(t, self.duration)
        i = self._index(rest)
        within = self._cum_bits[i] + (rest - self.times[i]) * self.rates_bps[i]
        return float(loops * self._cum_bits[-1] + within)

    def transfer_time(self, nbytes: int, t0: float, max_time: float = float("inf")) -> float:
        """Seconds needed to send ``nbytes`` starting at ``t0`` while the rate follows the trace.

        Outages (zero-rate samples) are waited out. Returns ``inf`` when the trace never carries
        the bits (an all-zero trace) or when more than ``max_time`` would be needed.
        """
        bits = 8.0 * nbytes
        if bits <= 0:
            return 0.0
        per_loop = float(self._cum_bits[-1])
        if per_loop <= 0:
            return float("inf")
        loops, rest = divmod(self._cumulative_bits(t0) + bits, per_loop)
        if rest <= 0:  # exactly at a loop boundary: finish at the end of the previous loop
            loops, rest = loops - 1, per_loop
        # first boundary carrying at least `rest` bits; the sample before it has a positive rate
        i = int(np.searchsorted(self._cum_bits, rest, side="left")) - 1
        t_end = loops * self.duration + self.times[i] + (rest - self._cum_bits[i]) / self.rates_bps[i]
        elapsed = max(float(t_end - t0), 0.0)
        return float("inf") if elapsed > max_time else elapsed

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
        first_loop = int(start // self.duration)
        last_loop = int(np.ceil((start + duration) / self.duration))
        loops = np.arange(first_loop, last_loop + 1)
        offsets = (self.times[None, :] + loops[:, None] * self.duration).ravel()
        sample = np.tile(np.arange(len(self.times)), len(loops))  # known index: no float modulo
        inside = (offsets > start) & (offsets < start + duration)
        starts = np.concatenate([[start], offsets[inside]])
        idx = np.concatenate([[self._index(start)], sample[inside]])
        return dataclasses.replace(
            self,
            times=(starts - start) / speedup,
            rates_bps=self.rates_bps[idx],
            duration=duration / speedup,
            rtts_s=None if self.rtts_s is None else self.rtts_s[idx],
            name=f"{self.name}[{start:g}+{duration:g}s x{speedup:g}]",
        )

    def scaled(self, factor: float) -> Trace:
        """The same trace with every rate multiplied by ``factor``."""
        return dataclasses.replace(self, rates_bps=self.rates_bps * factor, name=f"{self.name}*{factor:g}")


def time_value_pairs(pairs: Iterable[Sequence[float]], what: str, value: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """A config list ``[[t_s, value], ...]`` as two float arrays (times, values); anything else is
    a :class:`ConfigError` naming the setting ``what``. The times are not checked here."""
    try:
        rows = [tuple(float(v) for v in pair) for pair in pairs]
    except (TypeError, ValueError):
        rows = []
    if not rows or any(len(row) != 2 for row in rows):
        raise ConfigError(f"{what} must be a non-empty list of [t_s, {value}] pairs, got {pairs!r}")
    times, values = (np.array(col) for col in zip(*rows, strict=True))
    return times, values
