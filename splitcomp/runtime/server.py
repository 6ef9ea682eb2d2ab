"""The edge server: receives a cut's crossing values, runs the tail, returns logits and its load.

One thread per connection reads and validates frames; a single compute thread runs the tails in
arrival order, so concurrent clients queue for the accelerator exactly as they would on a real
edge server, and the queue length the server reports is real.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from splitcomp.errors import PeerError
from splitcomp.link.codecs import RawCodec
from splitcomp.link.frame_bytes import answer_meta, probe_ack_meta
from splitcomp.link.shaping import LinkTimeout
from splitcomp.link.wire import Frame, Kind, Limits, encode_frame, read_frame
from splitcomp.profile.timing import precise_sleep
from splitcomp.records import ServerReport
from splitcomp.runtime.fingerprint import describe_mismatch
from splitcomp.runtime.tails import TailBank

log = logging.getLogger("splitcomp.server")

RECENT_QUEUE_WEIGHT = 0.2  # EWMA weight of the newest job's queueing delay (reported to probes)


@dataclass
class ServerSettings:
    io_timeout_s: float = 30.0
    max_batch: int = 64
    max_clients: int = 64
    secret: bytes | None = None
    limits: Limits = field(default_factory=Limits)
    tls: ssl.SSLContext | None = None


@dataclass
class Job:
    cut_index: int
    values: tuple[Any, ...]
    t_scenario: float
    enqueued: float
    queue_len: int
    future: Future = field(default_factory=Future)


class LoadEffects:
    """Applies the configured server-load model to one tail computation."""

    def __init__(self, load_model: Any = None) -> None:
        self.load_model = load_model

    def batch_at(self, t: float) -> int:
        return 1 if self.load_model is None else max(1, int(self.load_model.batch_at(t)))

    def slowdown_at(self, t: float) -> float:
        return 1.0 if self.load_model is None else max(1.0, float(self.load_model.slowdown_at(t)))


def batched(values: tuple[Any, ...], batch: int, copies: int) -> tuple[Any, ...]:
    """The request's values repeated ``copies`` times along the batch dimension: the other
    inputs of the batch the paper's load model assumes. Plain ints equal to the request's batch
    size (``x.size(0)`` carried across the cut) scale with it."""
    if copies == 1:
        return values
    out = []
    for value in values:
        if isinstance(value, torch.Tensor):
            out.append(torch.cat([value] * copies))
        elif isinstance(value, int) and not isinstance(value, bool) and value == batch:
            out.append(value * copies)
        else:
            out.append(value)
    return tuple(out)


class EdgeServer:
    def __init__(self, tails: TailBank, fingerprint: dict[str, str], load: LoadEffects | None = None,
                 downlink_pacer_factory: Callable[[float], tuple[Any, Any]] | None = None,
                 settings: ServerSettings | None = None) -> None:
        self.tails = tails
        self.fingerprint = fingerprint
        self.load = load or LoadEffects()
        self.downlink_pacer_factory = downlink_pacer_factory
        self.settings = settings or ServerSettings()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stop_event = threading.Event()
        self.clients = 0
        self.served = 0
        self.rejected_frames = 0
        self.recent_queue_s = 0.0  # recent mean queueing delay over every client's jobs
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------
    def serve_forever(self, listener: socket.socket) -> None:
        """Accept clients until ``stop()``; never raises on a bad client."""
        worker = threading.Thread(target=self._compute_loop, name="compute", daemon=True)
        worker.start()
        listener.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if self.clients >= self.settings.max_clients:
                log.warning("refusing %s: %d clients already connected", addr, self.clients)
                conn.close()
                continue
            thread = threading.Thread(target=self._handle_client, args=(conn, addr), daemon=True)
            thread.start()
        self.jobs.put(None)
        worker.join(timeout=5)

    def stop(self) -> None:
        self.stop_event.set()

    # --- per connection ---------------------------------------------------------------------
    def _handle_client(self, conn: socket.socket, addr: Any) -> None:
        with self._lock:
            self.clients += 1
        conn.settimeout(self.settings.io_timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.settings.tls is not None:
                conn = self.settings.tls.wrap_socket(conn, server_side=True)
            downlink = self._handshake(conn)
            while not self.stop_event.is_set():
                frame = self._read(conn)
                if frame is None:
                    break
                self._answer(conn, frame, downlink)
        except LinkTimeout as exc:  # an answer stuck in the shaped downlink: the stream is mid-message
            log.info("client %s: answer abandoned (%s)", addr, exc)
        except PeerError as exc:
            self._refuse(conn, str(exc))
        except OSError as exc:
            log.info("client %s dropped: %s", addr, exc)
        finally:
            conn.close()
            with self._lock:
                self.clients -= 1

    def _read(self, conn: socket.socket) -> Frame | None:
        try:
            return read_frame(conn, self.settings.limits, self.settings.secret)
        except PeerError as exc:
            if "closed the connection after 0 of" in str(exc):
                return None  # clean disconnect between frames
            with self._lock:
                self.rejected_frames += 1
            raise

    def _handshake(self, conn: socket.socket) -> Any:
        frame = self._read(conn)
        if frame is None:
            raise OSError("client left before the handshake")
        if frame.kind is not Kind.HELLO:
            raise PeerError("the first frame must be HELLO")
        mismatch = describe_mismatch(self.fingerprint, frame.meta.get("fingerprint") or {})
        if mismatch:
            raise PeerError(mismatch)
        origin = frame.meta.get("clock_origin")
        origin = float(origin) if isinstance(origin, (int, float)) else time.time()
        self._send(conn, encode_frame(Kind.WELCOME, {"cuts": self.tails.n_cuts,
                                                    "device": str(self.tails.device)},
                                      secret=self.settings.secret))
        if self.downlink_pacer_factory is None or frame.meta.get("link") == "unshaped":
            return None  # background clients load the server, not the device's link
        return self.downlink_pacer_factory(origin)

    def _send_response(self, conn: socket.socket, data: bytes, downlink: Any) -> None:
        """Send on the downlink: paced by the link's trace when the link shapes it."""
        if downlink is None:
            self._send(conn, data)
        else:
            pacer, clock = downlink
            pacer.send(conn, data, clock)

    def _answer(self, conn: socket.socket, frame: Frame, downlink: Any) -> None:
        received = time.perf_counter()
        if frame.kind is Kind.PROBE:  # acknowledged over the downlink, with the load a request would meet now
            report = self._load_now(frame.meta.get("t"))
            ack = encode_frame(Kind.PROBE_ACK, probe_ack_meta(report, frame.payload_bytes), secret=self.settings.secret)
            self._send_response(conn, ack, downlink)
            return
        if frame.kind is not Kind.REQUEST:
            raise PeerError(f"unexpected {frame.kind.name} frame")
        meta = frame.meta
        cut_index = meta.get("cut")
        tail, signature = self.tails.get(cut_index)
        t0 = time.perf_counter()
        try:
            values = frame.values()
        except ValueError as exc:
            raise PeerError(f"cannot decode the request: {exc}") from None
        decode_s = time.perf_counter() - t0
        batch = signature.check(values, self.settings.max_batch)
        t_scenario = meta.get("t") if isinstance(meta.get("t"), (int, float)) else 0.0
        job = Job(cut_index, values, float(t_scenario), time.perf_counter(), self.jobs.qsize())
        self.jobs.put(job)
        logits, report = job.future.result()
        report = dataclasses.replace(report, decode_s=decode_s, handled_s=time.perf_counter() - received)
        response = encode_frame(Kind.RESPONSE, answer_meta(report, meta.get("request")), [logits], RawCodec(),
                                secret=self.settings.secret)
        self._send_response(conn, response, downlink)
        log.debug("answered request %s at cut %d (batch %d)", meta.get("request"), cut_index, batch)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)

    def _refuse(self, conn: socket.socket, message: str) -> None:
        log.warning("refusing a client: %s", message)
        try:
            conn.settimeout(1.0)
            conn.sendall(encode_frame(Kind.ERROR, {"error": message}, secret=self.settings.secret))
        except OSError:
            pass

    # --- compute ----------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job.future.set_result(self._compute(job))
            except Exception as exc:  # a bad request must not kill the server
                log.exception("tail failed")
                job.future.set_exception(PeerError(f"the server failed to run the tail: {exc}"))

    def _load_now(self, t: Any) -> ServerReport:
        """What a request arriving at scenario time ``t`` would meet: batch, slowdown, the jobs
        queued now and the recent mean queueing delay."""
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0
        return ServerReport(batch_size=self.load.batch_at(t), queue_len=self.jobs.qsize(),
                            slowdown=self.load.slowdown_at(t), queue_s=self.recent_queue_s)

    def _compute(self, job: Job) -> tuple[torch.Tensor, ServerReport]:
        started = time.perf_counter()
        queue_s = started - job.enqueued
        tail, _ = self.tails.get(job.cut_index)
        batch = next((v.shape[0] for v in job.values if isinstance(v, torch.Tensor)), 1)
        copies = self.load.batch_at(job.t_scenario)
        device = self.tails.device
        inputs = tuple(v.to(device) if isinstance(v, torch.Tensor) else v
                       for v in batched(job.values, batch, copies))
        with torch.inference_mode():
            output = tail(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        tail_s = time.perf_counter() - started
        slowdown = self.load.slowdown_at(job.t_scenario)
        if slowdown > 1.0:
            precise_sleep((slowdown - 1.0) * tail_s)
        server_s = time.perf_counter() - started
        self.served += 1
        self.recent_queue_s += RECENT_QUEUE_WEIGHT * (queue_s - self.recent_queue_s)
        report = ServerReport(batch_size=copies, queue_len=job.queue_len, slowdown=slowdown, queue_s=queue_s,
                              tail_s=tail_s, server_s=server_s)
        return output[:batch].to("cpu").float(), report
