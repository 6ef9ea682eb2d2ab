"""The typed contracts between the request loop, its backends, the edge server and the trackers.

* :class:`ServerReport`: what the edge server says about itself in every answer, probe answers
  included (its queue, the batch and slowdown it computes under, its own timings).
* :class:`ServerLoad`: the server's state as a latency model reads it (from a report, or from a
  server-load model for hindsight policies and the simulator).
* :class:`RequestRecord`: one request as both backends record it; every field once.

This module depends on nothing else in the package, so every room may import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from splitcomp.errors import PeerError

NAN = math.nan


@dataclass
class ServerLoad:
    """The server's state as reported by it or assumed by a load model."""

    batch_size: int = 1  # the request is computed together with batch_size - 1 others
    queue_len: int = 0  # requests waiting ahead of this one
    slowdown: float = 1.0  # multiplies the tail time (contention beyond batching)
    queue_s: float = 0.0  # known queueing delay; when 0, it is estimated from queue_len


@dataclass(frozen=True)
class ServerReport:
    """The server's account of one answer (request or probe), sent in the answer's header.

    For a request: the batch and slowdown its tail ran under, the jobs queued ahead of it when it
    arrived and its own times. For a probe: the batch and slowdown a request would get now, the
    jobs queued now, and as ``queue_s`` the recent mean queueing delay of all clients' jobs, so
    that a device which stopped offloading still learns when the load drops."""

    batch_size: int = 1
    queue_len: int = 0
    slowdown: float = 1.0
    queue_s: float = 0.0  # time in the server's queue
    tail_s: float = 0.0  # the tail's computation, before the slowdown
    server_s: float = 0.0  # the tail's time, slowdown included
    decode_s: float = 0.0  # decoding the request's tensors
    handled_s: float = 0.0  # the whole frame read -> the answer ready (covers the three above)
    batch_requests: int = 1  # requests (from any device) computed in the same tail call
    queued_now: int = 0  # jobs waiting in the server when the answer was computed

    def to_meta(self) -> dict[str, Any]:
        """The plain JSON values carried in an answer's header."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ServerReport:
        """The report in an answer's header; a missing field takes its default, a value of the
        wrong kind (not a finite non-negative number, a batch below 1) is a :class:`PeerError`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in meta:
                continue
            value = meta[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise PeerError(f"the edge server reported {f.name}={value!r}, not a finite non-negative number")
            if f.type in ("int", int):
                if not isinstance(value, int):
                    raise PeerError(f"the edge server reported {f.name}={value!r}, not a whole number")
                values[f.name] = value
            else:
                values[f.name] = float(value)
        if values.get("batch_size", 1) < 1:
            raise PeerError(f"the edge server reported batch_size={values['batch_size']}, below 1")
        return cls(**values)

    def as_load(self) -> ServerLoad:
        return ServerLoad(batch_size=self.batch_size, queue_len=self.queue_len, slowdown=self.slowdown,
                          queue_s=self.queue_s)


# The parts a request's latency is made of, in the order they happen; they are disjoint, so on
# a run whose clock loses nothing they add up to ``latency_s`` (the rest is ``unaccounted_s``).
PART_FIELDS = ("wait_s", "probe_s", "connect_s", "device_s", "encode_s", "uplink_s", "decode_s", "queue_s",
               "server_s", "overhead_s", "downlink_s")


@dataclass
class RequestRecord(Mapping[str, Any]):
    """One request, as the simulator and the real runtime both record it (times in seconds,
    scenario time from the run's start).

    ``latency_s`` runs from ``t_due`` (the request's arrival) to the moment its answer is usable
    on the device. Its parts:

    * ``wait_s``: due while the device was still serving earlier requests (one device serves one
      request at a time, in arrival order);
    * ``probe_s``: held back by a rate probe that ran past the due time;
    * ``connect_s``: (re)connecting to the edge server before sending;
    * ``device_s``: the head on the device, and on a fallback the rest of the model too;
    * ``encode_s``: encoding the head's output into a request frame;
    * ``uplink_s``: sending the frame, one-way delay included; a failed upload's seconds too;
    * ``decode_s``, ``queue_s``, ``server_s``, ``overhead_s``: on the server, from its report:
      decoding, queueing, the tail (slowdown included), and its own handling beyond those;
    * ``downlink_s``: the answer's way back (the server's encoding, the transfer with its delay,
      reading it); after a failed exchange, the time from the end of the upload to the failure.

    ``unaccounted_s`` is ``latency_s`` minus those parts: time the clock saw pass that no part
    measured (the loop's own bookkeeping); 0 in the simulator.

    The record reads like a mapping too (``record["latency_s"]``), so tables and CSV files take it
    as a row."""

    request: int
    t_due: float
    t_start: float  # when the device began this request's work, after waiting and probing
    cut: int
    cut_name: str
    latency_s: float
    fallback: bool = False  # finished on the device: the server was unreachable or an exchange failed
    wait_s: float = 0.0
    probe_s: float = 0.0
    connect_s: float = 0.0
    device_s: float = 0.0
    encode_s: float = 0.0
    uplink_s: float = 0.0
    decode_s: float = 0.0
    queue_s: float = 0.0
    server_s: float = 0.0
    overhead_s: float = 0.0
    downlink_s: float = 0.0
    unaccounted_s: float = 0.0
    bytes_up: int = 0  # whole frames, header included
    bytes_down: int = 0
    predicted_latency_s: float = NAN  # the latency model's prediction before the request ran
    predicted_device_s: float = NAN
    predicted_encode_s: float = NAN
    predicted_uplink_s: float = NAN
    predicted_rtt_s: float = NAN
    predicted_queue_s: float = NAN
    predicted_server_s: float = NAN
    predicted_decode_s: float = NAN
    predicted_downlink_s: float = NAN
    rate_trace_bps: float = NAN  # the uplink trace's rate at t_start
    rate_estimate_bps: float = NAN  # the device's estimate the decision used (NaN: none yet)
    server_load: float = NAN  # the server's batch size when batching, else its queue length
    prediction: int | None = None  # the predicted class (None in the simulator)
    reference: int | None = None  # the unsplit model's class on the same input
    label: int | None = None

    # --- read as a mapping (rows of tables and CSV files) ---------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(RECORD_FIELDS)

    def __len__(self) -> int:
        return len(_FIELD_NAMES)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    @property
    def parts_s(self) -> float:
        """The sum of the measured parts of the latency."""
        return sum(getattr(self, name) for name in PART_FIELDS)


RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
_FIELD_NAMES = frozenset(RECORD_FIELDS)
