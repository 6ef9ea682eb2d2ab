"""Per-cut profiles and the latency model built on them.

A :class:`CutProfile` holds what was measured for one candidate cut (device head time, server tail
time per batch size, codec times, bytes each way). :class:`LatencyModel` turns a profile plus a
channel state (a rate estimate, or the true trace) and a server load into an end-to-end latency,
term by term. Policies, the oracle and the simulator all predict through it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from splitcomp.errors import ConfigError
from splitcomp.files import atomic_write_text
from splitcomp.link.frame_bytes import FrameBytes, wire_frame_bytes
from splitcomp.records import ServerLoad
from splitcomp.scenario.trace import Trace

PROFILES_FORMAT = 1
INF = float("inf")


def _interpolate(points: dict[int, float], batch: float) -> float:
    """Piecewise-linear value at ``batch`` through ``points``; linear extrapolation outside them
    from the two nearest points (constant with one point), never below zero."""
    if not points:
        raise ValueError("no profiled batch sizes to interpolate between")
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    if batch <= xs[0]:
        lo, hi = xs[0], xs[1]
    elif batch >= xs[-1]:
        lo, hi = xs[-2], xs[-1]
    else:
        hi = next(x for x in xs if x >= batch)
        lo = xs[xs.index(hi) - 1]
    slope = (points[hi] - points[lo]) / (hi - lo)
    return max(0.0, points[lo] + slope * (batch - lo))


@dataclass
class CutProfile:
    """What was measured for one candidate cut; times are medians in seconds."""

    index: int  # index in plan.cuts
    name: str
    bytes_up: int  # codec payload crossing the cut (the wire format's frame adds its header on top)
    bytes_down: int  # response payload (logits); 0 for device-only
    head_s: dict[int, float]  # batch size -> device head time, device slowdown included
    tail_s: dict[int, float]  # batch size -> server time for the whole batch (a request waits for all of it)
    encode_s: float = 0.0  # codec encode on the device (not dilated by the device slowdown, as at run time)
    decode_s: float = 0.0  # codec decode (and copy to the server's torch device) on the server
    head_spread_s: dict[int, float] = field(default_factory=dict)  # interquartile range
    tail_spread_s: dict[int, float] = field(default_factory=dict)
    is_device_only: bool = False
    is_full_offload: bool = False
    head_flops: float | None = None  # from the plan's cut, for FLOP-based policies (None when unknown)
    tail_flops: float | None = None

    def head_at(self, batch: int = 1) -> float:
        return _interpolate(self.head_s, batch)

    def tail_at(self, batch: int) -> float:
        """Server time for a batch of ``batch`` requests, interpolated linearly between the profiled
        batch sizes and extrapolated linearly beyond them."""
        if self.is_device_only:
            return 0.0
        return _interpolate(self.tail_s, batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CutProfile:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("head_s", "tail_s", "head_spread_s", "tail_spread_s"):
            values[name] = {int(b): float(t) for b, t in values.get(name, {}).items()}
        return cls(**values)


@dataclass
class Profiles:
    """Profiles of every candidate cut, in plan order, with the key they were measured under."""

    key: dict[str, Any]
    cuts: list[CutProfile]
    # where these came from ("measured", or the cache file's path); not saved, not compared
    source: str = field(default="measured", compare=False)

    def by_name(self, name: str) -> CutProfile:
        for cut in self.cuts:
            if cut.name == name:
                return cut
        raise ConfigError(f"no profiled cut named {name!r}; profiled cuts: {[c.name for c in self.cuts]}")

    @property
    def names(self) -> list[str]:
        return [cut.name for cut in self.cuts]

    def to_json(self) -> str:
        data = {"format": PROFILES_FORMAT, "key": self.key, "cuts": [c.to_dict() for c in self.cuts]}
        return json.dumps(data, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Profiles:
        try:
            data = json.loads(text)
            if data.get("format") != PROFILES_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {PROFILES_FORMAT}")
            return cls(key=dict(data["key"]), cuts=[CutProfile.from_dict(c) for c in data["cuts"]])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a splitcomp profiles file ({exc}); re-create it with splitcomp-profile") from None

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically (a reader never sees half a file)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Profiles:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read profiles file {path} ({exc.strerror}); check the path") from None
        return cls.from_json(text)


@dataclass
class LatencyBreakdown:
    device_s: float = 0.0
    encode_s: float = 0.0
    uplink_s: float = 0.0
    rtt_s: float = 0.0
    queue_s: float = 0.0
    server_s: float = 0.0
    decode_s: float = 0.0
    downlink_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _BREAKDOWN_FIELDS}


_BREAKDOWN_FIELDS = tuple(f.name for f in fields(LatencyBreakdown))


def _check_images(cut: CutProfile, batch: int) -> int:
    """A request's image count: a positive integer, and above 1 only for a head profiled at several
    batch sizes (a head timed on one image says nothing about how it scales)."""
    images = int(batch)
    if images < 1 or images != batch:
        raise ConfigError(f"batch={batch!r}: a request carries a positive whole number of images")
    if images > 1 and len(cut.head_s) < 2:
        raise ConfigError(f"cut {cut.name!r} has its head profiled at batch size {sorted(cut.head_s)} only; "
                          "profile the head at several batch sizes to predict batches of images")
    return images


def transfer_s(nbytes: int, rate_bps: float | None) -> float:
    """Seconds to send ``nbytes`` at ``rate_bps``; inf for a missing, zero, negative or NaN rate."""
    if nbytes <= 0:
        return 0.0
    if rate_bps is None or not rate_bps > 0:  # `not >` also catches NaN
        return INF
    return 8.0 * nbytes / rate_bps


class LatencyModel:
    """End-to-end latency of a request for a cut:

    ``head + encode + uplink + rtt + queue + tail(batch) * slowdown + decode + downlink + overhead``.

    A device-only cut costs its head alone. A missing or zero data rate for an offloading cut
    gives an infinite uplink time, never an exception or NaN. ``rate_down_bps=None`` (or
    ``downlink=None`` on a trace) means the response crosses the same channel as the request.
    Transfers are charged for whole frames: ``frames`` gives the bytes the wire format adds
    (default: :func:`~splitcomp.link.frame_bytes.wire_frame_bytes`).
    """

    def __init__(self, profiles: Profiles, rtt_s: float = 0.0, one_way_delay_s: float = 0.0,
                 overhead_s: float = 0.0, frames: FrameBytes | None = None) -> None:
        self.profiles = profiles
        self.rtt_s = float(rtt_s)
        self.one_way_delay_s = float(one_way_delay_s)
        self.overhead_s = float(overhead_s)
        self.frames = frames or wire_frame_bytes()

    def default_rtt_s(self) -> float:
        """The configured RTT, or twice the one-way delay when no RTT is given."""
        return self.rtt_s if self.rtt_s > 0 else 2.0 * self.one_way_delay_s

    def server_terms(self, cut: CutProfile, load: ServerLoad, images: int = 1) -> tuple[float, float]:
        """(queue_s, server_s) under ``load``: the tail runs in a batch of ``load.batch_size`` (plus
        ``images - 1`` when the request carries several images); without a known queueing delay,
        each batch of requests queued ahead costs one such batch."""
        batch = max(1, int(load.batch_size)) + images - 1
        server_s = cut.tail_at(batch) * float(load.slowdown)
        queue_s = float(load.queue_s)
        if queue_s <= 0 and load.queue_len > 0:
            queue_s = math.ceil(load.queue_len / batch) * server_s
        return queue_s, server_s

    def request_bytes(self, cut: CutProfile, images: int = 1) -> int:
        """Bytes of the request frame of ``cut`` carrying ``images`` images (0 for device-only)."""
        return 0 if cut.is_device_only else self.frames.request_bytes(cut.name, images * cut.bytes_up)

    def answer_bytes(self, cut: CutProfile, images: int = 1) -> int:
        """Bytes of the answer frame to a request at ``cut`` (0 for device-only)."""
        return 0 if cut.is_device_only else self.frames.answer_bytes(images * cut.bytes_down)

    def predict(self, cut: CutProfile, rate_up_bps: float | None, rate_down_bps: float | None = None,
                load: ServerLoad | None = None, rtt_s: float | None = None, batch: int = 1) -> LatencyBreakdown:
        """Latency predicted from data-rate estimates (bit/s).

        ``batch`` images travel as one request (the batch semantics of Bakhtiarnia et al.): the
        device computes the head on all of them (the head time profiled at that batch size),
        encodes them, sends their payloads in one frame, and the server decodes them and computes
        the tail on them together (with ``load.batch_size - 1`` other requests' images); the
        response carries ``batch`` outputs. ``batch=1`` is a single image."""
        images = _check_images(cut, batch)
        head_s = cut.head_at(images)
        if cut.is_device_only:
            return LatencyBreakdown(device_s=head_s, total_s=head_s + self.overhead_s)
        queue_s, server_s = self.server_terms(cut, load or ServerLoad(), images)
        down_rate = rate_up_bps if rate_down_bps is None else rate_down_bps
        return self._assemble(cut, head_s, transfer_s(self.request_bytes(cut, images), rate_up_bps),
                              self.default_rtt_s() if rtt_s is None else float(rtt_s), queue_s, server_s,
                              transfer_s(self.answer_bytes(cut, images), down_rate), images)

    def predict_on_trace(self, cut: CutProfile, uplink: Trace, t0: float, downlink: Trace | None = None,
                         load: ServerLoad | None = None, rtt_s: float | None = None) -> LatencyBreakdown:
        """Latency of a request started at scenario time ``t0`` when transfers follow the true
        channel (``Trace.transfer_time``): outages are waited out, so the result stays finite
        unless the trace never carries data. The RTT is ``rtt_s``, else the trace's RTT at the
        send time, else the model's.

        The times are those of the real link: the request frame enters the shaped channel half
        an RTT after it is sent (the one-way delay comes first), the answer likewise after the
        server is done; the uplink and downlink terms are the shaped transfers alone."""
        head_s = cut.head_at(1)
        if cut.is_device_only:
            return LatencyBreakdown(device_s=head_s, total_s=head_s + self.overhead_s)
        queue_s, server_s = self.server_terms(cut, load or ServerLoad())
        t_send = t0 + head_s + cut.encode_s
        if rtt_s is None:
            trace_rtt = uplink.rtt_at(t_send)
            rtt_s = self.default_rtt_s() if trace_rtt is None else trace_rtt
        half = float(rtt_s) / 2
        uplink_s = uplink.transfer_time(self.request_bytes(cut), t_send + half)
        t_reply = t_send + half + uplink_s + cut.decode_s + queue_s + server_s
        downlink_s = ((downlink or uplink).transfer_time(self.answer_bytes(cut), t_reply + half)
                      if math.isfinite(t_reply) else INF)
        return self._assemble(cut, head_s, uplink_s, float(rtt_s), queue_s, server_s, downlink_s)

    def predict_all(self, rate_up_bps: float | None, rate_down_bps: float | None = None,
                    load: ServerLoad | None = None, rtt_s: float | None = None, batch: int = 1) -> list[LatencyBreakdown]:
        """``predict`` for every profiled cut, in plan order."""
        return [self.predict(cut, rate_up_bps, rate_down_bps, load, rtt_s, batch) for cut in self.profiles.cuts]

    def _assemble(self, cut: CutProfile, head_s: float, uplink_s: float, rtt_s: float, queue_s: float,
                  server_s: float, downlink_s: float, images: int = 1) -> LatencyBreakdown:
        parts = LatencyBreakdown(device_s=head_s, encode_s=images * cut.encode_s, uplink_s=uplink_s, rtt_s=rtt_s,
                                 queue_s=queue_s, server_s=server_s, decode_s=images * cut.decode_s,
                                 downlink_s=downlink_s)
        parts.total_s = sum(v for k, v in parts.as_dict().items() if k != "total_s") + self.overhead_s
        return parts
