"""What the fleet simulator takes from a real calibration run: how long the real server's batches
and answers take, and the real devices' head times.

The profiler times each tail back to back on a quiet thread; in a fleet the server's compute
thread shares the interpreter with tens of connection and device threads, so one request after
an idle gap takes about twice its profiled time, and each further member of a batch adds about
the same per-request time. The calibration therefore fits, per cut, a batch's real seconds as
``fixed + per_request * n`` over the calibration run's batches, and keeps the ratios of the real
times to the fit (drawn per batch in the simulator). The answer's way back after the tail (the
server's handling, encoding, the device thread reading it among the others) grows with the
batch, as the batch's answers are sent one after another: it is fitted as ``a + b * n`` with its
residuals. Encoding and pacing an upload take a little longer than the profile and the trace
say (the pacer's chunks, the interpreter shared): the median excess is added to every upload. Cuts the calibration run never offloaded fall back to their profile times the median
ratio. All of it is measured on another seed than the run it is compared with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from splitcomp.fleet.metrics import BatchSpan
from splitcomp.profile.latency import CutProfile
from splitcomp.records import RequestRecord

MIN_HEAD_S = 0.005  # below this a head's measured/profiled ratio is the sleep's overshoot


@dataclass(frozen=True)
class Line:
    """``fixed + slope * n``, never below zero."""

    fixed: float
    slope: float

    def at(self, n: float) -> float:
        return max(0.0, self.fixed + self.slope * n)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Line | None:
    """Least-squares line through the medians of ``ys`` at each distinct ``x`` (weighted by how
    many there are); None with fewer than two distinct x. A negative slope is taken as flat."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, y in zip(xs, ys):
        by_x[x].append(y)
    if len(by_x) < 2:
        return None
    x = np.array(sorted(by_x))
    y = np.array([np.median(by_x[v]) for v in x])
    w = np.sqrt([len(by_x[v]) for v in x])
    slope, fixed = np.polyfit(x, y, 1, w=w)
    if slope < 0:
        return Line(float(np.average(y, weights=w * w)), 0.0)
    return Line(float(fixed), float(slope))


@dataclass
class ServerTiming:
    """Batch and answer times of the modelled server (the profiles when nothing is calibrated)."""

    batch_lines: dict[int, Line] = field(default_factory=dict)  # cut index -> seconds at n requests
    batch_ratios: list[float] = field(default_factory=list)  # real / fitted, per calibration batch
    profile_ratio: float = 1.0  # real / profiled, for cuts without a line
    answer_line: Line = Line(0.0, 0.0)  # seconds after the tail, by the batch's size
    answer_residuals: list[float] = field(default_factory=list)
    send_extra_s: float = 0.0  # encoding and pacing an upload beyond the profile and the trace

    def batch_seconds(self, cut: CutProfile, n: int, rng: np.random.Generator) -> float:
        line = self.batch_lines.get(cut.index)
        base = line.at(n) if line is not None else cut.tail_at(n) * self.profile_ratio
        return base * (_draw(self.batch_ratios, rng) if self.batch_ratios else 1.0)

    def answer_seconds(self, n: int, rng: np.random.Generator) -> float:
        extra = _draw(self.answer_residuals, rng) if self.answer_residuals else 0.0
        return max(0.0, self.answer_line.at(n) + extra)

    def summary(self) -> dict[str, float]:
        lines = {f"batch_ms_cut{c}_fixed": 1e3 * v.fixed for c, v in self.batch_lines.items()}
        lines.update({f"batch_ms_cut{c}_per_request": 1e3 * v.slope for c, v in self.batch_lines.items()})
        return {**lines, "profile_ratio": self.profile_ratio, "answer_ms_fixed": 1e3 * self.answer_line.fixed,
                "answer_ms_per_request": 1e3 * self.answer_line.slope, "send_extra_ms": 1e3 * self.send_extra_s}


def _draw(values: Sequence[float], rng: np.random.Generator) -> float:
    return float(values[int(rng.integers(len(values)))])


@dataclass
class Calibration:
    """The server's timing and the devices' head-time ratios, from real fleet runs."""

    server: ServerTiming = field(default_factory=ServerTiming)
    device_factors: list[float] = field(default_factory=list)

    @classmethod
    def from_runs(cls, cuts: Sequence[CutProfile],
                  runs: Sequence[tuple[Sequence[Sequence[RequestRecord]], Sequence[BatchSpan]]]) -> Calibration:
        """Fit on the (records per device, batches) of one or more real fleet runs."""
        by_index = {c.index: c for c in cuts}
        batches = [b for _, spans in runs for b in spans if b.cut in by_index]
        answered = [r for records, _ in runs for device in records for r in device
                    if r.bytes_up > 0 and not r.fallback]
        lines: dict[int, Line] = {}
        for index in {b.cut for b in batches}:
            mine = [b for b in batches if b.cut == index]
            line = fit_line([b.requests for b in mine], [b.seconds for b in mine])
            if line is not None and line.at(1) > 0:
                lines[index] = line
        profiled = [b.seconds / by_index[b.cut].tail_at(b.requests) for b in batches
                    if by_index[b.cut].tail_at(b.requests) >= MIN_HEAD_S]
        ratios = [b.seconds / lines[b.cut].at(b.requests) for b in batches
                  if b.cut in lines and lines[b.cut].at(b.requests) > 0]
        size_of = {b.seconds: b.requests for _, spans in runs for b in spans}  # a batch's members share its time
        sizes = [size_of.get(r.server_s, 1) for r in answered]
        after = [r.overhead_s + r.downlink_s for r in answered]
        answer = fit_line(sizes, after) or Line(float(np.median(after)) if after else 0.0, 0.0)
        residuals = [a - answer.at(n) for n, a in zip(sizes, after)]
        device = [r.device_s / by_index[r.cut].head_at(1) for records, _ in runs for d in records for r in d
                  if not r.fallback and r.cut in by_index and by_index[r.cut].head_at(1) >= MIN_HEAD_S]
        send = [r.encode_s + r.uplink_s - by_index[r.cut].encode_s - 8 * r.bytes_up / r.rate_trace_bps
                for r in answered if r.cut in by_index and r.rate_trace_bps > 0]
        timing = ServerTiming(lines, sorted(ratios), float(np.median(profiled)) if profiled else 1.0, answer,
                              sorted(residuals), max(0.0, float(np.median(send))) if send else 0.0)
        return cls(timing, sorted(device))

    def summary(self) -> dict[str, float]:
        median = float(np.median(self.device_factors)) if self.device_factors else float("nan")
        return {**self.server.summary(), "device_factor_median": median}
