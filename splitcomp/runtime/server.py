"""The edge server: receives a cut's crossing values, runs the tail, returns logits and its load.

One thread per connection reads and validates frames; a single compute thread runs the tails,
so concurrent clients queue for the accelerator exactly as they would on a real edge server, and
the queue length the server reports is real. With ``batching`` off the tails run one request at a
time in arrival order; with it on, requests of the same cut from every connection are computed
together in batches of at most ``max_batch`` rows, each closed when full or when its oldest
request has waited ``max_wait_s``, the cuts served round robin (:mod:`splitcomp.runtime.batching`).
Every answer reports the batch it ran in, its time in the queue and the queue left behind it.

Every peer is presumed hostile until its frames prove otherwise, and after that too: a
connection takes a slot at accept (in all and per address), must finish TLS and HELLO within
``handshake_timeout_s``, every frame within ``io_timeout_s`` plus its payload at
``min_rate_bps``, and is closed after ``idle_timeout_s`` without a frame. A request's items are
checked against its cut and the agreed codec before its payload is read; payload bytes come out
of one server-wide budget. Any error in a frame becomes an ERROR frame, a count in
``rejected_frames`` and at most one log line, never a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from splitcomp.errors import PeerError
from splitcomp.link.auth import FrameAuth, new_nonce, session_key
from splitcomp.link.budget import ByteBudget
from splitcomp.link.buffers import PayloadPool
from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.link.frame_bytes import answer_meta, probe_ack_meta
from splitcomp.link.shaping import LinkTimeout
from splitcomp.link.wire import (
    ConnectionClosed,
    Frame,
    FrameError,
    FrameReader,
    IdleTimeout,
    ItemSpec,
    Kind,
    Limits,
    Timeouts,
    encode_frame,
)
from splitcomp.profile.timing import precise_sleep
from splitcomp.records import ServerReport
from splitcomp.runtime.admission import ConnectionSlots, Throttle
from splitcomp.runtime.batching import BatchQueue, Job, concatenate
from splitcomp.runtime.fingerprint import describe_mismatch
from splitcomp.runtime.handshake import Hello, ModelMismatch, RequestMeta, Welcome
from splitcomp.runtime.tails import TailBank

log = logging.getLogger("splitcomp.server")

_MAX_ERROR_CHARS = 400
RECENT_QUEUE_WEIGHT = 0.2  # EWMA weight of the newest job's queueing delay (reported to probes)


@dataclass
class ServerSettings:
    io_timeout_s: float = 30.0          # a frame must arrive within this, plus its payload at min_rate_bps
    handshake_timeout_s: float = 5.0    # TLS and HELLO together, from accept
    idle_timeout_s: float = 600.0       # a connection without a frame for this long is closed
    min_rate_bps: float = 1e6
    max_batch: int = 64                 # rows one request may carry; batching: rows one batch may hold
    batching: bool = False              # compute requests of one cut from all connections together
    max_wait_s: float = 0.005           # batching: a batch closes when its oldest request has waited this
    max_clients: int = 256
    max_clients_per_address: int = 64
    max_inflight_bytes: int = 512 << 20  # payload (and decoded) bytes held for frames in flight, all peers
    max_probe_bytes: int = 16 << 20
    idle_buffer_bytes: int = 64 << 20   # payload buffers kept for reuse between frames, all peers
    secret: bytes | None = None
    limits: Limits = field(default_factory=Limits)
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class BatchRun:
    """One tail call, as the server's history keeps it (for throughput and batch-size figures)."""

    started: float  # time.perf_counter() when the tail began
    seconds: float
    rows: int
    requests: int
    queued: int  # jobs still waiting when it ended
    cut: int = -1


@dataclass
class Connection:
    """One peer's socket, its frame reader and MAC state, and what its handshake settled."""

    sock: socket.socket
    reader: FrameReader
    auth: FrameAuth | None
    established: bool = False   # WELCOME sent: from here on even ERROR frames are authenticated
    downlink: Any = None


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
    """``codec``: the codec the device encodes with (part of the fingerprint); requests may use it
    or raw, nothing else."""

    def __init__(self, tails: TailBank, fingerprint: dict[str, str], load: LoadEffects | None = None,
                 downlink_pacer_factory: Callable[[float], tuple[Any, Any]] | None = None,
                 settings: ServerSettings | None = None, codec: Codec | None = None) -> None:
        self.tails = tails
        self.fingerprint = fingerprint
        self.load = load or LoadEffects()
        self.downlink_pacer_factory = downlink_pacer_factory
        self.settings = settings or ServerSettings()
        self.codecs = frozenset({RawCodec.name, (codec or RawCodec()).name})
        self.slots = ConnectionSlots(self.settings.max_clients, self.settings.max_clients_per_address)
        self.budget = ByteBudget(self.settings.max_inflight_bytes)
        self.payload_pool = PayloadPool(self.settings.idle_buffer_bytes)
        self.frame_timeouts = Timeouts(idle_s=self.settings.idle_timeout_s, frame_s=self.settings.io_timeout_s,
                                       min_rate_bps=self.settings.min_rate_bps)
        self.jobs: queue.Queue[Job | None] | BatchQueue = (
            BatchQueue(self.settings.max_batch, self.settings.max_wait_s) if self.settings.batching
            else queue.Queue())
        self.history: deque[BatchRun] = deque(maxlen=100_000)
        self.stop_event = threading.Event()
        self.served = 0
        self.rejected_frames = 0
        self.recent_queue_s = 0.0  # recent mean queueing delay over every client's jobs
        self.turned_away = 0
        self._lock = threading.Lock()
        self._throttle = Throttle()

    @property
    def clients(self) -> int:
        """Connections holding a slot now."""
        return self.slots.total

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
            refusal = self.slots.take(addr[0])
            if refusal is not None:
                self._turn_away(conn, refusal)
                continue
            threading.Thread(target=self._serve_connection, args=(conn, addr), daemon=True).start()
        if isinstance(self.jobs, BatchQueue):
            self.jobs.close()
        else:
            self.jobs.put(None)
        worker.join(timeout=5)

    def stop(self) -> None:
        self.stop_event.set()

    # --- per connection ---------------------------------------------------------------------
    def _turn_away(self, conn: socket.socket, reason: str) -> None:
        """Refuse a connection for want of a slot: one ERROR frame if it fits at once, then close."""
        with self._lock:
            self.turned_away += 1
        self._warn("full", "turning connections away: %s", reason)
        try:
            if self.settings.tls is None:
                conn.setblocking(False)
                conn.send(encode_frame(Kind.ERROR, {"error": f"{reason}; retry later", "code": "busy"}))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_connection(self, conn: socket.socket, addr: Any) -> None:
        deadline = time.monotonic() + self.settings.handshake_timeout_s
        connection, refused = None, False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.settings.tls is not None:
                conn.settimeout(self.settings.handshake_timeout_s)  # the whole TLS handshake
                conn = self.settings.tls.wrap_socket(conn, server_side=True)
            auth = FrameAuth.server(self.settings.secret) if self.settings.secret else None
            connection = Connection(conn, FrameReader(conn, self.settings.limits, auth, self.budget,
                                                          self.payload_pool), auth)
            self._handshake(connection, deadline)
            while not self.stop_event.is_set():
                frame = connection.reader.read(allowed=(Kind.REQUEST, Kind.PROBE), check=self._check_header,
                                               timeouts=self.frame_timeouts)
                try:
                    self._answer(connection, frame)
                finally:
                    frame.release()
        except (ConnectionClosed, IdleTimeout) as exc:
            log.debug("client %s: %s", addr, exc)
        except LinkTimeout as exc:  # an answer stuck in the shaped downlink: the stream is mid-message
            log.info("client %s: answer abandoned (%s)", addr, exc)
        except PeerError as exc:
            refused = self._reject(connection, conn, str(exc), getattr(exc, "code", "refused"))
        except OSError as exc:  # reset, TLS failure, a send that timed out
            log.debug("client %s dropped: %s", addr, exc)
        except Exception as exc:  # noqa: BLE001 (a frame must never end the server or leave a traceback)
            refused = self._reject(connection, conn, f"the server failed on this frame ({type(exc).__name__})",
                                   "internal")
            self._warn("internal", "client %s: %s: %s", addr, type(exc).__name__, exc)
        finally:
            if refused:
                _close_gracefully(conn)
            else:
                conn.close()
            self.slots.give_back(addr[0])

    def _handshake(self, connection: Connection, deadline: float) -> None:
        """HELLO in, WELCOME out, all by ``deadline`` (counted from accept, TLS included)."""
        frame = connection.reader.read(allowed=(Kind.HELLO,), timeouts=Timeouts(idle_s=None, frame_s=None),
                                       deadline=deadline)
        hello = Hello.parse(frame.meta)
        mismatch = describe_mismatch(self.fingerprint, hello.fingerprint, disclose=connection.auth is not None)
        if mismatch:
            raise ModelMismatch(mismatch)
        welcome = Welcome(self.tails.n_cuts, str(self.tails.device), new_nonce(), hello.nonce)
        connection.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        self._send(connection, encode_frame(Kind.WELCOME, welcome.meta(), auth=connection.auth))
        if connection.auth is not None:
            connection.auth.use_session_key(session_key(self.settings.secret, hello.nonce, welcome.nonce))
        connection.established = True
        if self.downlink_pacer_factory is not None and hello.shaped:  # background clients: no device link
            connection.downlink = self.downlink_pacer_factory(hello.clock_origin)

    def _check_header(self, kind: Kind, meta: dict[str, Any], items: list[Any]) -> None:
        """A frame's header against what this server takes, before its payload is read."""
        if kind is Kind.PROBE:
            filler = items[0] if len(items) == 1 else None
            if not isinstance(filler, ItemSpec) or filler.codec != RawCodec.name or filler.dtype != "uint8" \
                    or len(filler.shape) != 1 or filler.nbytes > self.settings.max_probe_bytes:
                raise FrameError(f"a PROBE carries one raw uint8 vector of at most "
                                 f"{self.settings.max_probe_bytes} bytes")
            return
        request = RequestMeta.parse(meta)
        _, signature = self.tails.get(request.cut)
        signature.check_items(items, self.codecs, self.settings.max_batch)

    def _answer(self, connection: Connection, frame: Frame) -> None:
        received = time.perf_counter()
        connection.sock.settimeout(self.settings.io_timeout_s)
        if frame.kind is Kind.PROBE:
            # acknowledged over the downlink, with the load a request would meet now
            report = self._load_now(frame.meta.get("t"))
            self._send(connection, encode_frame(Kind.PROBE_ACK, probe_ack_meta(report, frame.payload_bytes),
                                                auth=connection.auth), paced=True)
            return
        request = RequestMeta.parse(frame.meta)
        _, signature = self.tails.get(request.cut)
        t0 = time.perf_counter()
        try:
            values = frame.values()
        except ValueError as exc:
            raise FrameError(f"cannot decode the request: {exc}") from None
        decode_s = time.perf_counter() - t0
        batch = signature.check(values, self.settings.max_batch)
        job = Job(request.cut, values, request.t, time.perf_counter(), self.jobs.qsize(), rows=batch)
        self.jobs.put(job)
        logits, report = job.future.result()
        report = dataclasses.replace(report, decode_s=decode_s, handled_s=time.perf_counter() - received)
        response = encode_frame(Kind.RESPONSE, answer_meta(report, request.request), [logits], RawCodec(),
                                auth=connection.auth)
        self._send(connection, response, paced=True)
        log.debug("answered request %s at cut %d (batch %d)", request.request, request.cut, batch)

    def _send(self, connection: Connection, data: bytes, paced: bool = False) -> None:
        """Send one encoded frame (on the paced downlink when the link shapes it)."""
        if paced and connection.downlink is not None:
            pacer, clock = connection.downlink
            pacer.send(connection.sock, data, clock)
        else:
            connection.sock.sendall(data)
        if connection.auth is not None:
            connection.auth.sent()

    def _reject(self, connection: Connection | None, sock: socket.socket, message: str, code: str) -> bool:
        """Count the frame, say why in an ERROR frame (authenticated once the session exists);
        returns whether the ERROR frame went out."""
        with self._lock:
            self.rejected_frames += 1
        self._warn(code, "refusing a client: %s", message)
        auth = connection.auth if connection is not None and connection.established else None
        try:
            sock.settimeout(1.0)
            sock.sendall(encode_frame(Kind.ERROR, {"error": message[:_MAX_ERROR_CHARS], "code": code}, auth=auth))
            return True
        except (OSError, ValueError):
            return False

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """A warning at most every few seconds per kind; the rest at debug level."""
        log.log(logging.WARNING if self._throttle.allow(key) else logging.DEBUG, message, *args)

    # --- compute ----------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            try:
                for job, result in zip(jobs, self._compute(jobs)):
                    job.future.set_result(result)
            except Exception as exc:  # a bad request must not kill the server
                log.exception("tail failed")
                for job in jobs:
                    job.future.set_exception(PeerError(f"the server failed to run the tail: {exc}"))

    def _next_batch(self) -> list[Job] | None:
        if isinstance(self.jobs, BatchQueue):
            return self.jobs.take()
        job = self.jobs.get()
        return None if job is None else [job]

    def _load_now(self, t: Any) -> ServerReport:
        """What a request arriving at scenario time ``t`` would meet: batch, slowdown, the jobs
        queued now and the recent mean queueing delay."""
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0
        queued = self.jobs.qsize()
        return ServerReport(batch_size=self.load.batch_at(t), queue_len=queued,
                            slowdown=self.load.slowdown_at(t), queue_s=self.recent_queue_s, queued_now=queued)

    def _compute(self, jobs: list[Job]) -> list[tuple[torch.Tensor, ServerReport]]:
        """Run the tail once on the jobs' values (one cut); each job's logits and report."""
        started = time.perf_counter()
        first = jobs[0]
        tail, _ = self.tails.get(first.cut_index)
        rows = sum(job.rows for job in jobs)
        copies = self.load.batch_at(first.t_scenario)
        device = self.tails.device
        inputs = tuple(v.to(device) if isinstance(v, torch.Tensor) else v
                       for v in batched(concatenate(jobs), rows, copies))
        with torch.inference_mode():
            output = tail(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        tail_s = time.perf_counter() - started
        slowdown = self.load.slowdown_at(first.t_scenario)
        if slowdown > 1.0:
            precise_sleep((slowdown - 1.0) * tail_s)
        server_s = time.perf_counter() - started
        output = output[:rows].to("cpu").float()
        queued = self.jobs.qsize()
        self.history.append(BatchRun(started, server_s, rows * copies, len(jobs), queued, first.cut_index))
        answers, offset = [], 0
        for job in jobs:
            queue_s = started - job.enqueued
            self.served += 1
            self.recent_queue_s += RECENT_QUEUE_WEIGHT * (queue_s - self.recent_queue_s)
            report = ServerReport(batch_size=rows * copies, queue_len=job.queue_len, slowdown=slowdown,
                                  queue_s=queue_s, tail_s=tail_s, server_s=server_s, batch_requests=len(jobs),
                                  queued_now=queued)
            answers.append((output[offset : offset + job.rows], report))
            offset += job.rows
        return answers


def _close_gracefully(sock: socket.socket, linger_s: float = 1.0, max_bytes: int = 1 << 20) -> None:
    """Close after an ERROR frame, draining what the peer still sends (briefly, into a small
    scratch buffer): closing with unread bytes makes the kernel reset the connection, and the
    peer would lose the ERROR frame that says what went wrong."""
    try:
        sock.shutdown(socket.SHUT_WR)
        scratch, drained = bytearray(1 << 16), 0
        deadline = time.monotonic() + linger_s
        while drained < max_bytes and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            n = sock.recv_into(scratch)
            if not n:
                break
            drained += n
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
