"""The socket backend: serves each request of the request loop (:mod:`splitcomp.loop`) for real.

The device runs the head (dilated by its slowdown), encodes the values it sends, and the frame
crosses the real TCP link (shaped by the link's pacer) to the edge-server process, which
answers with the logits and its :class:`~splitcomp.records.ServerReport`. Everything the loop
decides is the same as in the simulator; this module only serves and measures, on the scenario
clock:

* ``device_s`` is the head as :func:`~splitcomp.profile.timing.run_on_device` ran it (and the
  local tail on a fallback), ``encode_s`` the frame's encoding, ``connect_s`` a reconnection;
* ``uplink_s`` is the pacer's send (one-way delay included); the server's report gives
  ``decode_s``, ``queue_s``, ``server_s`` and, as ``overhead_s``, the rest of its handling time;
  ``downlink_s`` is the rest of the wait for the answer (the server's encoding, the paced
  transfer with its delay, reading and decoding it on the device).

A probe beside a device-only request (``Job.probe``) goes from a second thread while this one
computes: the emulated device stretches the computing thread's own CPU time
(:func:`~splitcomp.profile.timing.run_on_device`), so the probe's thread does not lengthen it.

The connection is opened lazily, when a request or probe first needs the server: a run that
starts while the server is unreachable runs on the device and keeps retrying (with a growing
back-off after each failed connection). After any failed exchange the connection is closed (its
stream is mid-message) and the next exchange reconnects.

The unsplit model's prediction of every input (the ``reference`` of the agreement check) is
computed after the run, off the scenario clock: computed between requests it left gaps of about
half a second every 32 requests in the timeline, time that belonged to no request. Inputs are
read from the dataset before the run and wait in memory for the reference pass; beyond
``reference_budget_bytes`` both happen between two requests, and that time shows as the next
request's ``unaccounted_s`` if one is due.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from splitcomp.errors import PeerError
from splitcomp.link.shaping import LinkTimeout, ScenarioClock, sleep_until
from splitcomp.loop import Job, ProbeResult, RequestLoop, RunEnv, Served, Transfer
from splitcomp.records import RequestRecord, ServerReport
from splitcomp.runtime.client import EdgeClient, HandshakeError
from splitcomp.runtime.device import Device

log = logging.getLogger("splitcomp")

REFERENCE_BUDGET_BYTES = 256 * 2**20  # inputs held for the reference pass after the run


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
    """Keeps one connection, opened when first needed; after a failed connection, waits an
    exponentially growing back-off before the next attempt."""

    def __init__(self, connect: Callable[[], EdgeClient], backoff_s: float, max_backoff_s: float) -> None:
        self.connect = connect
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.client: EdgeClient | None = None
        self.failures = 0
        self.retry_at = 0.0

    def available(self) -> bool:
        """False during the back-off after a failed connection."""
        return (self.client is not None and self.client.connected) or time.monotonic() >= self.retry_at

    def get(self) -> EdgeClient:
        """The live connection, or a new one; a failed connection raises ``PeerError`` (and starts
        the back-off). ``HandshakeError`` (a different model, a bad secret) is not retried."""
        if self.client is not None and self.client.connected:
            return self.client
        self.client = None
        try:
            self.client = self.connect()
        except HandshakeError:
            raise
        except PeerError as exc:
            self._back_off(exc)
            raise
        self.failures = 0
        return self.client

    def lost(self) -> None:
        """An exchange failed: drop the connection (its stream is mid-message); reconnect next time."""
        self.close()

    def _back_off(self, exc: BaseException) -> None:
        self.failures += 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        log.warning("edge server unavailable (%s); running on the device, retrying in %.1f s", exc, delay)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


class SocketBackend:
    """Serves the loop's requests and probes with the real device, link and server."""

    def __init__(self, parts: SocketParts, reconnector: Reconnector,
                 reference_budget_bytes: int = REFERENCE_BUDGET_BYTES) -> None:
        self.parts, self.reconnector = parts, reconnector
        self.clock, self.device, self.link = parts.clock, parts.device, parts.link
        self.samples: Iterator[tuple[torch.Tensor, int]] = iter(parts.samples)
        self.inputs: deque[tuple[torch.Tensor, int]] = deque()
        self.budget_bytes = reference_budget_bytes
        self.uplink_pacers: dict[float, Any] = {}
        self.references = _References(parts.device, reference_budget_bytes)
        # sends a job's probe while the device computes (the link is idle then)
        self.prober = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitcomp-probe")

    # --- the clock -----------------------------------------------------------------------------
    def start(self) -> None:
        """Scenario time 0 is now: whatever ran before (the policy's preparation, starting the
        background clients, reading the first inputs) is not on the run's clock."""
        self._read_inputs()
        self.clock.restart()

    def _read_inputs(self) -> None:
        """Read inputs ahead, up to the memory budget: reading a dataset (decoding, resizing an
        image) is not the device's work, which starts when a camera frame is there."""
        held = 0
        while held < self.budget_bytes:
            sample = next(self.samples, None)
            if sample is None:
                return
            self.inputs.append(sample)
            held += sample[0].numel() * sample[0].element_size()

    def now(self) -> float:
        return self.clock.now()

    def wait_until(self, t: float) -> None:
        sleep_until(self.clock, t)

    def has_input(self) -> bool:
        """Another input? Beyond the memory budget, inputs are read and references computed here,
        between two requests (time that shows as the next one's ``unaccounted_s`` if it is due)."""
        self.references.within_budget()
        if not self.inputs:
            self._read_inputs()
        return bool(self.inputs)

    def reachable(self) -> bool:
        return self.reconnector.available()

    def _pacer(self, deadline_s: float) -> Any:
        if deadline_s not in self.uplink_pacers:
            self.uplink_pacers[deadline_s] = self.link.uplink_pacer(max_transfer_s=deadline_s)
        return self.uplink_pacers[deadline_s]

    def _connect(self) -> EdgeClient | None:
        """The connection, or None when it cannot be had (a back-off starts)."""
        try:
            return self.reconnector.get()
        except HandshakeError:
            raise
        except PeerError:
            return None

    # --- probes --------------------------------------------------------------------------------
    def probe(self, nbytes: int, deadline_s: float) -> ProbeResult:
        t_start = self.clock.now()
        client = self._connect()
        if client is None:
            return ProbeResult(self.clock.now(), Transfer.abandoned(nbytes, 0.0, t_start, 0.0))
        frame = client.probe_frame(nbytes)
        pacer = self._pacer(max(1e-3, deadline_s - (self.clock.now() - t_start)))
        sending = self.clock.now()
        try:
            client.send(frame, pacer)
        except PeerError as exc:
            return self._probe_failed(exc, _abandoned_upload(exc, len(frame), sending))
        sent = self.clock.now()
        upload = Transfer(len(frame), sent - sending - pacer.delay_s, sending)
        try:
            report = client.receive_probe_ack(timeout_s=deadline_s - (sent - t_start))
        except PeerError as exc:
            return self._probe_failed(exc, upload)
        t_done = self.clock.now()
        return ProbeResult(t_done, upload, report, rtt_s=t_done - sending - upload.seconds)

    def _probe_failed(self, exc: PeerError, upload: Transfer | None) -> ProbeResult:
        self.reconnector.lost()
        log.debug("probe failed: %s", exc)
        return ProbeResult(self.clock.now(), upload or Transfer.abandoned(0, 0.0, self.clock.now(), 0.0))

    # --- requests ------------------------------------------------------------------------------
    def serve(self, job: Job) -> Served:
        """One request; with ``job.probe`` (a device-only request), that probe goes from a second
        thread while this one computes, and the request returns once both are done."""
        if job.probe is None:
            return self._serve_request(job)
        probe = self.prober.submit(self.probe, job.probe.nbytes, job.probe.deadline_s)
        try:
            served = self._serve_request(job)
        finally:
            result = probe.result()  # the connection is the probe's until it is done
        served.probe = result
        return served

    def _serve_request(self, job: Job) -> Served:
        """One request; each part is a lap of one stopwatch on the scenario clock, so together
        they cover all of it."""
        watch = _Laps(self.clock)
        x_image, label = self.inputs.popleft()
        x = x_image.unsqueeze(0)
        self.references.add(job.index, x)
        cut = job.cut
        parts: dict[str, Any] = {}
        if not cut.is_device_only:
            client = self._connect()
            parts["connect_s"] = watch.lap()
        head = self.device.run_head(cut.index, x)
        if cut.is_device_only:
            prediction = _predicted_class(head.values[0])
            parts["device_s"] = watch.lap()
            return self._served(prediction, label, **parts)
        parts["device_s"] = watch.lap()
        if client is None:
            return self._fallback(cut, head, label, watch, parts)
        frame = client.request_frame(job.index, cut.index, head.values, self.parts.codec)
        pacer = self._pacer(job.deadline_s).giving_up(job.give_up)
        parts.update(encode_s=watch.lap(), bytes_up=len(frame))
        try:
            client.send(frame, pacer)
        except PeerError as exc:
            self.reconnector.lost()
            parts["uplink_s"] = watch.lap()
            return self._fallback(cut, head, label, watch, parts, upload=_abandoned_upload(exc, len(frame), watch.t0))
        parts["uplink_s"] = watch.lap()
        upload = Transfer(len(frame), parts["uplink_s"] - pacer.delay_s, watch.t0)
        try:
            answer = client.receive(timeout_s=job.answer_wait_s)
        except PeerError:
            self.reconnector.lost()
            parts["downlink_s"] = watch.lap()
            return self._fallback(cut, head, label, watch, parts, upload=upload)
        prediction = _predicted_class(answer.logits)
        waited_s = watch.lap()
        report = answer.report
        server_s = report.decode_s + report.queue_s + report.server_s
        overhead_s = max(0.0, report.handled_s - server_s)
        return self._served(prediction, label, **parts, decode_s=report.decode_s, queue_s=report.queue_s,
                            server_s=report.server_s, overhead_s=overhead_s,
                            downlink_s=waited_s - server_s - overhead_s, bytes_down=answer.bytes_down,
                            report=report, upload=upload)

    def _fallback(self, cut: Any, head: Any, label: int, watch: _Laps, parts: dict[str, Any],
                  upload: Transfer | None = None) -> Served:
        """The exchange failed: the device runs the rest of the model itself."""
        logits, _ = self.device.run_tail_locally(cut.index, head.values)
        prediction = _predicted_class(logits)
        parts["device_s"] += watch.lap()
        return self._served(prediction, label, failed=True, upload=upload, **parts)

    def _served(self, prediction: int, label: int, **parts: Any) -> Served:
        return Served(self.clock.now(), prediction=prediction, label=int(label), **parts)

    def close(self) -> None:
        self.prober.shutdown(wait=True)
        self.reconnector.close()


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
        self.loop: RequestLoop | None = None
        self.observer: Callable[[RequestRecord], None] | None = None  # called after every request
        self.initial_report: ServerReport | None = None  # what the server reported before the first run

    @property
    def records(self) -> list[RequestRecord]:
        """The records of the run in progress or last run (readable after an interruption)."""
        return [] if self.loop is None else self.loop.records

    def attach(self, session: Any) -> None:
        """The socket session (link, server address, device) that :meth:`run` uses. The server
        must answer here (a wrong address is one clear error before any run); with ``warmup``,
        every candidate cut is exercised once on both sides first (see :func:`warm_up`)."""
        self.session = session
        self.initial_report = warm_up(session, exercise=self.warmup)

    def run(self, env: RunEnv, parts: SocketParts | None = None) -> list[RequestRecord]:
        """Serve ``env.n_requests`` requests; ``parts`` defaults to the attached session's."""
        if parts is None:
            if self.session is None:
                raise RuntimeError("SocketRuntime.run needs parts or an attached session")
            parts = self.session.parts(env)
        env = _with_probes(env, self.probe)
        backend = SocketBackend(parts, Reconnector(parts.connect, self.backoff_s, self.max_backoff_s))
        self.loop = RequestLoop(env, backend, self.initial_report)
        bar = tqdm(total=env.n_requests, desc=f"{env.policy.name} requests", disable=not self.progress, unit="req")

        def progress(record: RequestRecord) -> None:
            bar.update(1)
            bar.set_postfix(cut=record.cut_name, ms=f"{1000 * record.latency_s:.1f}")
            if self.observer is not None:
                self.observer(record)

        self.loop.on_record = progress
        if parts.background is not None:
            parts.background.start()
        try:
            records = self.loop.run()
        finally:
            bar.close()
            backend.close()
            if parts.background is not None:
                parts.background.stop()
        backend.references.fill(records)
        return records


def _predicted_class(logits: torch.Tensor) -> int:
    return int(logits.argmax(1)[0])


class _Laps:
    """A stopwatch on the scenario clock: each ``lap()`` is the time since the previous one."""

    def __init__(self, clock: ScenarioClock) -> None:
        self.clock = clock
        self.t0 = self.last = clock.now()

    def lap(self) -> float:
        now = self.clock.now()
        self.t0, seconds, self.last = self.last, now - self.last, now
        return seconds


def _abandoned_upload(exc: PeerError, nbytes: int, t_start: float) -> Transfer | None:
    """What a failed upload says about the rate: a deadline (``LinkTimeout``) tells the bytes
    the link carried in its time; a broken connection says nothing."""
    if not isinstance(exc, LinkTimeout):
        return None
    return Transfer.abandoned(nbytes, exc.shaped_s, t_start, exc.carried_bytes)


def _with_probes(env: RunEnv, probe: bool) -> RunEnv:
    return dataclasses.replace(env, probes=env.probes and probe)


class _References:
    """The unsplit model's prediction of every input, computed off the request timeline."""

    def __init__(self, device: Device, budget_bytes: int) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.held_bytes = 0
        self.classes: dict[int, int] = {}

    def add(self, index: int, x: torch.Tensor) -> None:
        self.pending.append((index, x))
        self.held_bytes += x.numel() * x.element_size()

    def within_budget(self) -> None:
        if self.held_bytes > self.budget_bytes:
            self.compute()

    def compute(self) -> None:
        for index, x in self.pending:
            self.classes[index] = int(self.device.reference(x).argmax(1)[0])
        self.pending.clear()
        self.held_bytes = 0

    def fill(self, records: list[RequestRecord]) -> None:
        self.compute()
        for record in records:
            record.reference = self.classes.get(record.request)


def warm_up(session: Any, exercise: bool = True) -> ServerReport:
    """Connect once (an unreachable server or a different model is an error here, before any
    run) and, with ``exercise``, send one unrecorded request per candidate cut over an exchange
    shaped in neither direction.

    The first call of a head or tail builds it (``plan.split``) and pays one-off allocations, which
    the profiles (medians after warm-up calls) do not contain. Returns the server's last report,
    so that the first request of a run is predicted with a reported load like every later one
    (not as batch 1 on a batching server). Without both, the first request at each cut was
    mispredicted by 47% on average, against 5% with them (Lite0, batch-4 load)."""
    work = session.scenario.work
    client = session.connect(unshaped_answers=True)
    report = ServerReport()
    try:
        for cut in session.scenario.profiles.cuts if exercise else []:
            head = session.device.run_head(cut.index, work.example_input)
            session.device.reference(work.example_input)
            if not cut.is_device_only:
                frame = client.request_frame(-1, cut.index, head.values, work.codec)
                report = client.exchange(frame).report
    finally:
        client.close()
    return report
