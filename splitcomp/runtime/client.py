"""The device's connection to the edge server: handshake, requests, probes, reconnection.

The device trusts the server's answer no more than the server trusts the device: an answer must
be for the request just sent, carry exactly one raw float tensor ``[batch, classes]`` of finite
values and a well-formed load report, or the exchange fails with a :class:`PeerError` subclass
and the request falls back to the device. A connection the server closed while it was idle is
replaced quietly before the next request is sent.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import torch

from splitcomp.errors import PeerError
from splitcomp.link.auth import FrameAuth, new_nonce, session_key
from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.link.frame_bytes import probe_meta, request_meta
from splitcomp.link.shaping import LinkTimeout, tcp_connect
from splitcomp.link.wire import (
    PREFIX,
    AuthError,
    Frame,
    FrameError,
    FrameReader,
    HeaderCheck,
    ItemSpec,
    Kind,
    Limits,
    Timeouts,
    VersionError,
    encode_frame,
    needs_resign,
    resign,
)
from splitcomp.records import ServerReport
from splitcomp.runtime.handshake import Hello, Welcome
from splitcomp.runtime.security import ClientTls

log = logging.getLogger("splitcomp")

_FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
_HANDSHAKE_CODES = frozenset({"auth", "model", "version"})
_MAX_CLASSES = 1 << 20
_MAX_REASON_CHARS = 400


class HandshakeError(PeerError):
    """The server refused the session (a different model, secret or protocol, or TLS failed):
    retrying cannot help."""


class ConnectionLost(PeerError):
    """The server is unreachable, closed the connection or did not answer in time."""


class ServerRefused(PeerError):
    """The server answered with an ERROR frame (it is full or busy, or refused the request)."""


class BadAnswer(PeerError):
    """The server's answer is malformed: wrong request id, tensor, values or load report."""


@dataclass
class Answer:
    """What the server sent back for one request."""

    logits: torch.Tensor
    report: ServerReport
    bytes_down: int                 # the whole answer frame
    request: Any = None             # the request id the server says it answers


@dataclass
class Reply(Answer):
    """An answer with the device-side timings of the whole exchange."""

    bytes_up: int = 0               # frame bytes sent (header included)
    send_s: float = 0.0             # device: first byte handed to the link .. last byte handed
    round_trip_s: float = 0.0       # device: first byte sent .. whole answer received and decoded


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port), with a clear error when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise PeerError(f"server.address {address!r} is not HOST:PORT (for example 192.0.2.10:7000)")
    return host.strip("[]"), int(port)


class EdgeClient:
    """One TCP connection to an edge server. Every socket operation has a timeout.

    ``classes``: the model's number of outputs, checked in every answer when given.
    ``unshaped_answers``: ask the server not to pace its answers on this connection (a background
    client: load on the server, not on the device's link)."""

    def __init__(self, host: str, port: int, fingerprint: dict[str, str], clock: Any, link: Any = None,
                 connect_timeout_s: float = 5.0, io_timeout_s: float = 30.0, secret: bytes | None = None,
                 limits: Limits | None = None, tls: ClientTls | ssl.SSLContext | None = None,
                 classes: int | None = None, unshaped_answers: bool = False) -> None:
        self.host, self.port = host, port
        self.fingerprint = fingerprint
        self.clock = clock
        self.link = link
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.secret = secret
        self.limits = limits or Limits(max_payload_bytes=64 << 20, max_decoded_bytes=64 << 20)
        self.tls = ClientTls(tls) if isinstance(tls, ssl.SSLContext) else tls
        self.classes = classes
        self.unshaped_answers = unshaped_answers
        self.timeouts = Timeouts(idle_s=io_timeout_s, frame_s=io_timeout_s)
        self.sock: socket.socket | None = None
        self.auth: FrameAuth | None = None
        self.reader: FrameReader | None = None
        self.server_info: dict[str, Any] = {}
        self.reconnections = 0   # idle connections the server closed, replaced quietly
        self._pending: tuple[Any, int] = (None, 1)   # (request id, batch) of the frame sent last

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        sock = self._open_socket()
        self.sock = sock
        self.auth = FrameAuth.device(self.secret) if self.secret else None
        self.reader = FrameReader(sock, self.limits, self.auth)
        try:
            hello = Hello(self.fingerprint, self.clock.origin, new_nonce(), shaped=not self.unshaped_answers)
            self._send(encode_frame(Kind.HELLO, hello.meta(), auth=self.auth))
            frame = self._read(Kind.WELCOME, handshake=True)
            welcome = Welcome.parse(frame.meta)
            if welcome.device_nonce != hello.nonce:
                raise HandshakeError("the server's WELCOME answers another HELLO (a replayed frame?)")
            if self.auth is not None:
                self.auth.use_session_key(session_key(self.secret, hello.nonce, welcome.nonce))
            self.server_info = {"cuts": welcome.cuts, "device": welcome.device}
        except FrameError as exc:
            self.close()
            raise HandshakeError(f"the edge server's WELCOME is not acceptable ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _open_socket(self) -> socket.socket:
        try:
            connect = self.link.connect if self.link is not None else tcp_connect
            sock = connect(self.host, self.port, self.connect_timeout_s)
        except OSError as exc:
            raise ConnectionLost(f"cannot reach the edge server at {self.host}:{self.port} ({exc.strerror or exc}); "
                                 "start it with splitcomp-serve or check server.address") from None
        sock.settimeout(self.io_timeout_s)
        if self.tls is None:
            return sock
        try:
            return self.tls.wrap(sock, self.host)
        except ssl.SSLEOFError as exc:  # closed mid-handshake (a full server, for one): retry later
            sock.close()
            raise ConnectionLost(f"the edge server at {self.host}:{self.port} closed the connection during "
                                 f"TLS ({exc})") from None
        except ssl.SSLError as exc:  # the certificate, its name or pin, or the protocol: check the config
            sock.close()
            raise HandshakeError(f"TLS with the edge server at {self.host}:{self.port} failed ({exc}); "
                                 "check server.tls on both sides") from None
        except OSError as exc:
            sock.close()
            raise ConnectionLost(f"lost the edge server at {self.host}:{self.port} during TLS ({exc})") from None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.reader = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    # --- exchanges --------------------------------------------------------------------------
    def request_frame(self, request_id: int, cut_index: int, values: tuple[Any, ...], codec: Codec) -> bytes:
        """Encode the head's output for sending (the device's encode step)."""
        return encode_frame(Kind.REQUEST, request_meta(request_id, cut_index, self.clock.now()), values, codec,
                            auth=self.auth)

    def probe_frame(self, nbytes: int) -> bytes:
        """A probe of ``nbytes`` of filler."""
        return encode_frame(Kind.PROBE, probe_meta(self.clock.now()), [torch.zeros(nbytes, dtype=torch.uint8)],
                            auth=self.auth)

    def send(self, frame: bytes, pacer: Any = None) -> Any:
        """Send one encoded frame (a request or a probe) on the uplink, through ``pacer`` when the
        link is shaped (its ``TransferStats``)."""
        self._pending = _request_of(frame)
        return self._send(self._ready(frame), pacer)

    def receive(self, timeout_s: float | None = None) -> Answer:
        """Wait (at most ``timeout_s``; None: the connection's I/O timeout) for the answer to the
        request sent last; its header is checked before its payload is read, its logits must be
        finite."""
        frame = self._read_within(Kind.RESPONSE, self._answer_check(*self._pending), timeout_s,
                                  "the device stopped waiting for the answer")
        (logits,) = frame.values()
        if not bool(torch.isfinite(logits).all()):
            self.close()
            raise BadAnswer("the edge server's logits hold NaN or infinite values")
        return Answer(logits, _report(frame.meta), frame.wire_bytes, frame.meta.get("request"))

    def exchange(self, frame: bytes, pacer: Any = None) -> Reply:
        """Send one encoded request on the uplink and wait for the logits."""
        started = time.perf_counter()
        self.send(frame, pacer)
        sent = time.perf_counter()
        answer = self.receive()
        done = time.perf_counter()
        return Reply(answer.logits, answer.report, answer.bytes_down, answer.request, len(frame), sent - started,
                     done - started)

    def receive_probe_ack(self, timeout_s: float | None = None) -> ServerReport:
        """Wait (at most ``timeout_s``) for the answer to the probe sent last: the server's report."""
        ack = self._read_within(Kind.PROBE_ACK, _report_check, timeout_s, "the probe's deadline passed before its answer")
        nbytes = self._pending[1]
        if ack.meta.get("bytes") != nbytes:
            self.close()
            raise BadAnswer(f"the edge server acknowledged {ack.meta.get('bytes')!r} probe bytes, not {nbytes}")
        return _report(ack.meta)

    # --- plumbing ---------------------------------------------------------------------------
    def _ready(self, frame: bytes | None) -> bytes | None:
        """Reconnect quietly when the server closed the connection while it was idle; a frame
        signed for the old connection is signed again for the new one."""
        if self.sock is None:
            raise ConnectionLost("not connected to the edge server")
        if _closed_by_peer(self.sock):
            log.debug("the edge server closed the idle connection; reconnecting")
            self.close()
            self.connect()
            self.reconnections += 1
        if frame is not None and self.auth is not None and needs_resign(frame, self.auth):
            frame = resign(frame, self.auth)
        return frame

    def _send(self, data: bytes, pacer: Any = None) -> Any:
        if self.sock is None:
            raise ConnectionLost("not connected to the edge server")
        try:
            stats = self.sock.sendall(data) if pacer is None else pacer.send(self.sock, data, self.clock)
        except LinkTimeout:
            self.close()  # the stream is mid-message
            raise
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"lost the edge server while sending ({exc})") from None
        if self.auth is not None:
            self.auth.sent()
        return stats

    def _read_within(self, kind: Kind, check: HeaderCheck, timeout_s: float | None, late: str) -> Frame:
        """:meth:`_read`, waiting at most ``timeout_s`` (None: the connection's I/O timeouts); a
        wait that runs out drops the connection (its stream may be mid-message) and raises
        ``ConnectionLost``, with ``late`` as the message when no time was left at all."""
        if timeout_s is None:
            return self._read(kind, check=check)
        if self.sock is not None:
            if timeout_s <= 0:
                self.close()
                raise ConnectionLost(late)
            self.sock.settimeout(timeout_s)
        try:
            return self._read(kind, check=check, timeouts=Timeouts(idle_s=timeout_s, frame_s=timeout_s))
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.io_timeout_s)

    def _read(self, kind: Kind, check: HeaderCheck | None = None, handshake: bool = False,
              timeouts: Timeouts | None = None) -> Frame:
        """The next frame, which must be ``kind`` (or an ERROR, raised as the matching error)."""
        if self.reader is None:
            raise ConnectionLost("not connected to the edge server")
        try:
            frame = self.reader.read(allowed=(kind, Kind.ERROR), check=check, timeouts=timeouts or self.timeouts,
                                     unauthenticated=(Kind.ERROR,) if handshake else ())
        except (VersionError, AuthError) as exc:
            self.close()
            if handshake:
                raise HandshakeError(str(exc)) from None
            raise BadAnswer(f"the edge server's answer is not acceptable ({exc})") from None
        except (BadAnswer, FrameError) as exc:
            self.close()
            raise BadAnswer(f"the edge server's answer is not acceptable ({exc})") from None
        except (PeerError, OSError) as exc:
            self.close()
            raise ConnectionLost(f"lost the edge server while waiting for its answer ({exc})") from None
        if frame.kind is Kind.ERROR:
            self.close()
            raise _refusal(frame.meta)
        return frame

    def _answer_check(self, request_id: int, batch: int) -> HeaderCheck:
        """Checks a RESPONSE header before its payload is read."""

        def check(kind: Kind, meta: dict[str, Any], items: list[Any]) -> None:
            if kind is not Kind.RESPONSE:
                return
            if meta.get("request") != request_id:
                raise BadAnswer(f"the answer is for request {meta.get('request')!r}, not {request_id}")
            _report_check(kind, meta, items)
            logits = items[0] if len(items) == 1 else None
            if not isinstance(logits, ItemSpec) or logits.codec != RawCodec.name or logits.dtype not in _FLOAT_DTYPES:
                raise BadAnswer("an answer carries exactly one raw float tensor of logits")
            classes_ok = 1 <= logits.shape[1] <= _MAX_CLASSES if len(logits.shape) == 2 else False
            if not classes_ok or logits.shape[0] != batch or (self.classes and logits.shape[1] != self.classes):
                raise BadAnswer(f"the logits have shape {list(logits.shape)}, not [{batch}, "
                                f"{self.classes or 'classes'}]")

        return check


def _report(meta: dict[str, Any]) -> ServerReport:
    """The server's load report in an answer's header, as a typed value."""
    try:
        return ServerReport.from_meta(meta)
    except PeerError as exc:
        raise BadAnswer(str(exc)) from None


def _report_check(kind: Kind, meta: dict[str, Any], items: list[Any]) -> None:
    """The load report's fields are finite non-negative numbers (counts are integers)."""
    if kind is Kind.ERROR:
        return
    if kind is Kind.PROBE_ACK and items:
        raise BadAnswer("a PROBE_ACK carries no items")
    _report(meta)


def _refusal(meta: dict[str, Any]) -> PeerError:
    """The error an ERROR frame stands for (its text is the server's, shortened and printable)."""
    reason = meta.get("error")
    reason = "no reason given" if not isinstance(reason, str) else "".join(
        c if c.isprintable() else "?" for c in reason[:_MAX_REASON_CHARS])
    code = meta.get("code")
    if code in _HANDSHAKE_CODES:
        return HandshakeError(f"the edge server refused the session: {reason}")
    return ServerRefused(f"the edge server refused: {reason}")


def _request_of(frame: bytes) -> tuple[Any, int]:
    """(request id, batch size) of a REQUEST frame this side encoded; (None, filler bytes) of a
    PROBE."""
    header_len = PREFIX.unpack_from(frame)[4]
    header = json.loads(bytes(memoryview(frame)[PREFIX.size : PREFIX.size + header_len]))
    shapes = [item["shape"] for item in header["items"] if "shape" in item and item["shape"]]
    return header["meta"].get("request"), (shapes[0][0] if shapes else 1)


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the server sent something while we asked nothing: it closed the connection
    (or is about to). Such a connection is no longer usable."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
