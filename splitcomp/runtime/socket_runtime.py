"""The real runtime: device head, real TCP link (optionally shaped), edge-server tail.

For every request the policy picks a cut from the *estimates* (rate estimate, the load the
server last reported); the device runs the head, encodes, sends over the link, and the server
answers. When the server fails mid-request the device finishes the request itself (a
``fallback``) and reconnects with backoff, so no request is ever lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from splitcomp.errors import PeerError
from splitcomp.link.shaping import ScenarioClock, sleep_until
from splitcomp.policy.base import DecisionContext, device_only_index
from splitcomp.profile.latency import ServerLoad
from splitcomp.runtime.client import EdgeClient, HandshakeError, Reply
from splitcomp.runtime.device import Device

log = logging.getLogger("splitcomp")

# Requests whose reference outputs (the unsplit model's, for the agreement check) are computed
# together between two requests; see _References.
REFERENCE_CHUNK = 32


@dataclass
class SocketParts:
    """What only the real runtime needs beyond the shared run environment."""

    device: Device
    samples: Iterable[tuple[torch.Tensor, int]]   # (uint8 image [3,H,W], label)
    codec: Any
    link: Any
    connect: Callable[[], EdgeClient]              # a new, handshaken connection to the server
    clock: ScenarioClock = field(default_factory=ScenarioClock)
    background: Any = None                         # background clients (server load), started per run


class Reconnector:
    """Keeps one connection; after a failure waits an exponentially growing backoff."""

    def __init__(self, connect: Callable[[], EdgeClient], backoff_s: float, max_backoff_s: float) -> None:
        self.connect = connect
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.client: EdgeClient | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""

    def get(self) -> EdgeClient | None:
        """The live connection, a new one if the backoff has passed, or None (server unavailable)."""
        if self.client is not None and self.client.connected:
            return self.client
        if time.monotonic() < self.retry_at:
            return None
        try:
            self.client = self.connect()
            self.failures = 0
            return self.client
        except HandshakeError:
            raise  # a different model on the server: falling back forever would hide it
        except PeerError as exc:
            self.failed(exc)
            return None

    def failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if self.client is not None:
            self.client.close()
        self.client = None
        self.failures += 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        log.warning("edge server unavailable (%s); running on the device, retrying in %.1f s", exc, delay)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class SocketRuntime:
    """``runtime=socket``: real partitioned inference over a socket."""

    needs_sockets = True

    def __init__(self, backoff_s: float = 0.2, max_backoff_s: float = 5.0, probe: bool = True,
                 progress: bool = True, warmup: bool = True) -> None:
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.probe = probe
        self.progress = progress
        self.warmup = warmup
        self.session: Any = None
        self.records: list[dict[str, Any]] = []
        self.initial_load = ServerLoad()  # what the server reported before the first run

    def attach(self, session: Any) -> None:
        """The socket session (link, server address, device) that :meth:`run` uses; with
        ``warmup``, every candidate cut is exercised once on both sides first (see :func:`warm_up`)."""
        self.session = session
        if self.warmup:
            self.initial_load = warm_up(session)

    def run(self, env: Any, parts: SocketParts | None = None) -> list[dict[str, Any]]:
        """Serve ``env.n_requests`` requests; ``parts`` defaults to the attached session's."""
        if parts is None:
            if self.session is None:
                raise RuntimeError("SocketRuntime.run needs parts or an attached session")
            parts = self.session.parts(env)
        env.policy.prepare(env)  # as the simulator does: hindsight policies look at the scenario
        env.estimator.reset()
        env.estimator.bind(env.uplink)
        run = _Run(env, parts, Reconnector(parts.connect, self.backoff_s, self.max_backoff_s), self.probe)
        run.load = self.initial_load
        run.reconnector.client = parts.connect()  # an unreachable server at the start is an error
        samples = iter(parts.samples)
        references = _References(parts.device, REFERENCE_CHUNK)
        records: list[dict[str, Any]] = []
        self.records = records  # readable after an interruption
        bar = tqdm(total=env.n_requests, desc=f"{getattr(env.policy, 'name', 'policy')} requests",
                   disable=not self.progress, unit="req")
        if parts.background is not None:
            parts.background.start()
        try:
            for i in range(env.n_requests):
                try:
                    image, label = next(samples)
                except StopIteration:
                    break
                x = image.unsqueeze(0)
                records.append(run.request(i, x, int(label)))
                references.add(records[-1], x)
                bar.update(1)
                bar.set_postfix(cut=records[-1]["cut_name"], ms=f"{1000 * records[-1]['latency_s']:.1f}")
        finally:
            bar.close()
            run.reconnector.close()
            if parts.background is not None:
                parts.background.stop()
        references.flush()
        return records


class _References:
    """The unsplit model's prediction of every request, off the request timeline.

    The check is bookkeeping, not work the device does. Run right after each request, it
    preceded every timed head and shared the caches with the server's tail (in one interleaved
    measurement on a 2-core VM the next head took 20-40% longer). Inputs now wait here and run
    every ``chunk`` requests, one at a time (a lone request's numerics), and at the end."""

    def __init__(self, device: Device, chunk: int) -> None:
        self.device = device
        self.chunk = chunk
        self.pending: list[tuple[dict[str, Any], torch.Tensor]] = []

    def add(self, record: dict[str, Any], x: torch.Tensor) -> None:
        self.pending.append((record, x))
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        for record, x in self.pending:
            record["reference"] = int(self.device.reference(x).argmax(1)[0])
        self.pending.clear()


class _Run:
    """State of one socket run: the clock, the last server report, the pacers."""

    def __init__(self, env: Any, parts: SocketParts, reconnector: Reconnector, probe: bool) -> None:
        self.env, self.parts, self.reconnector, self.probe_enabled = env, parts, reconnector, probe
        self.clock = parts.clock
        self.load = ServerLoad()
        self.uplink_pacer = parts.link.uplink_pacer()
        self.downlink_pacer = parts.link.downlink_pacer()
        self.rng = np.random.default_rng(env.seed)
        self.next_start = 0.0
        self.device_only = device_only_index(env.candidates)

    # --- one request ------------------------------------------------------------------------
    def request(self, i: int, x: torch.Tensor, label: int) -> dict[str, Any]:
        sleep_until(self.clock, self.next_start)
        client = self.reconnector.get()
        if client is not None and self.probe_enabled and self.env.estimator.needs_probe(self.clock.now()):
            self._probe(client)
        t_start = self.clock.now()
        ctx = self._context(t_start)
        choice = self.env.policy.choose(ctx) if client is not None else self.device_only
        cut = self.env.candidates[choice]
        predicted = self._predict(cut, ctx)
        record = self._execute(i, cut, x, client)
        record["fallback"] = record["fallback"] or client is None  # server known down: ran locally
        record.update(self._common_fields(i, t_start, cut, ctx, predicted, label))
        finish_record(record)
        self.env.policy.observe(record)
        end = t_start + record["latency_s"]
        self.next_start = self.env.arrivals.next_start(t_start, end, self.rng)
        return record

    def _context(self, t: float) -> DecisionContext:
        estimator = self.env.estimator
        true_load = ServerLoad(batch_size=self.env.load_model.batch_at(t),
                               slowdown=self.env.load_model.slowdown_at(t)) if self.env.load_model else None
        return DecisionContext(t=t, candidates=self.env.candidates, latency_model=self.env.latency_model,
                               rate_estimate_bps=estimator.estimate(t), rate_estimate_age_s=estimator.age(t),
                               load=self.load, uplink=self.env.uplink, downlink=self.env.downlink,
                               true_load=true_load)

    def _predict(self, cut: Any, ctx: DecisionContext) -> Any:
        rate = ctx.rate_estimate_bps
        return self.env.latency_model.predict(cut, rate, rate, ctx.load)

    def _execute(self, i: int, cut: Any, x: torch.Tensor, client: EdgeClient | None) -> dict[str, Any]:
        device = self.parts.device
        head = device.run_head(cut.index, x)
        if cut.is_device_only:
            return self._local_record(head.values[0], head.device_s, fallback=False)
        started = time.perf_counter()
        frame = client.request_frame(i, cut.index, head.values, self.parts.codec)
        encode_s = time.perf_counter() - started
        try:
            reply = client.exchange(frame, self.uplink_pacer)
        except PeerError as exc:
            self.reconnector.failed(exc)
            logits, tail_s = device.run_tail_locally(cut.index, head.values)
            record = self._local_record(logits, head.device_s + encode_s + tail_s, fallback=True)
            record.update(device_s=head.device_s, encode_s=encode_s, server_s=0.0)
            return record
        return self._remote_record(reply, head.device_s, encode_s, len(frame))

    def _local_record(self, logits: torch.Tensor, device_s: float, fallback: bool) -> dict[str, Any]:
        return {"logits": logits, "bytes_up": 0, "bytes_down": 0, "device_s": device_s, "encode_s": 0.0,
                "uplink_s": 0.0, "queue_s": 0.0, "server_s": 0.0, "downlink_s": 0.0, "decode_s": 0.0,
                "latency_s": device_s, "fallback": fallback, "rate_trace_bps": float("nan"),
                "server_load": float("nan")}

    def _remote_record(self, reply: Reply, device_s: float, encode_s: float, bytes_up: int) -> dict[str, Any]:
        report = reply.report
        self.load = reported_load(report)
        handled_s = float(report.get("handled_s", 0.0))
        network_s = max(0.0, reply.round_trip_s - handled_s)
        downlink_s = min(network_s, self.downlink_pacer.expected_seconds(reply.bytes_down, self.clock.now()))
        uplink_s = network_s - downlink_s
        self._feed_estimator(bytes_up, uplink_s)
        return {"logits": reply.logits, "bytes_up": bytes_up, "bytes_down": reply.bytes_down,
                "device_s": device_s, "encode_s": encode_s, "uplink_s": uplink_s,
                "queue_s": float(report.get("queue_s", 0.0)), "server_s": float(report.get("server_s", 0.0)),
                "decode_s": float(report.get("decode_s", 0.0)), "downlink_s": downlink_s,
                "latency_s": device_s + encode_s + reply.round_trip_s, "fallback": False,
                "rate_trace_bps": reply.uplink_trace_rate_bps, "server_load": self.load.batch_size
                if self.load.batch_size > 1 else self.load.queue_len}

    def _feed_estimator(self, nbytes: int, uplink_s: float) -> None:
        seconds = uplink_s - self.parts.link.one_way_delay_s
        if nbytes > 0 and seconds > 0:
            self.env.estimator.update(nbytes, seconds, self.clock.now())

    def _probe(self, client: EdgeClient) -> None:
        nbytes = int(getattr(self.env.estimator, "probe_bytes", 16384))
        try:
            seconds = client.probe(nbytes, self.uplink_pacer)
        except PeerError as exc:
            self.reconnector.failed(exc)
            return
        # The server acks a probe at once, without the downlink's delay or pacing, so the round
        # trip is the uplink transfer (whose one-way delay _feed_estimator takes off). Taking the
        # downlink's delay off as well left 10 ms too little: above ~13 Mbit/s nothing positive
        # remained and the estimate never formed (with a 16 KiB probe and a 10 ms delay).
        self._feed_estimator(nbytes, seconds)

    def _common_fields(self, i: int, t_start: float, cut: Any, ctx: DecisionContext, predicted: Any,
                       label: int) -> dict[str, Any]:
        fields = {"request": i, "t_start": t_start, "cut": cut.index, "cut_name": cut.name,
                  "predicted_latency_s": predicted.total_s if math.isfinite(predicted.total_s) else float("nan"),
                  "rate_estimate_bps": ctx.rate_estimate_bps if ctx.rate_estimate_bps is not None else float("nan"),
                  "reference": None, "label": label}  # reference: filled in by _References
        fields.update({f"predicted_{k}": v for k, v in predicted.as_dict().items() if k != "total_s"})
        return fields


def reported_load(report: dict[str, Any]) -> ServerLoad:
    """The server's load report (sent with every answer) as a :class:`ServerLoad`."""
    return ServerLoad(batch_size=int(report.get("batch_size", 1)), queue_len=int(report.get("queue_len", 0)),
                      slowdown=float(report.get("slowdown", 1.0)), queue_s=float(report.get("queue_s", 0.0)))


def warm_up(session: Any) -> ServerLoad:
    """One unrecorded request per candidate cut over an unshaped exchange, before any run.

    The first call of a head or tail builds it (``plan.split``) and pays one-off allocations, which
    the profiles (medians after warm-up calls) do not contain. Returns the load the server
    reported last, so that the first request of a run is predicted with a reported load like
    every later one (not as batch 1 on a batching server). Without both, the first request at
    each cut was mispredicted by 47% on average, against 5% with them (Lite0, batch-4 load)."""
    work = session.scenario.work
    client = session.connect()
    load = ServerLoad()
    try:
        for cut in session.scenario.profiles.cuts:
            head = session.device.run_head(cut.index, work.example_input)
            session.device.reference(work.example_input)
            if not cut.is_device_only:
                frame = client.request_frame(-1, cut.index, head.values, work.codec)
                load = reported_load(client.exchange(frame).report)
    finally:
        client.close()
    return load


def finish_record(record: dict[str, Any]) -> dict[str, Any]:
    """Replace the logits by the predicted class (records are flat rows)."""
    logits = record.pop("logits")
    record["prediction"] = int(logits.argmax(1)[0])
    return record
