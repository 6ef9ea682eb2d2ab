"""The device's connection to the edge server: handshake, requests, probes, reconnection."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import torch

from splitcomp.errors import PeerError
from splitcomp.link.codecs import Codec
from splitcomp.link.frame_bytes import probe_meta, request_meta
from splitcomp.link.shaping import LinkTimeout
from splitcomp.link.wire import Frame, FrameError, Kind, Limits, encode_frame, read_frame
from splitcomp.records import ServerReport


class HandshakeError(PeerError):
    """The server refused the session (a different model, or a bad secret): retrying cannot help."""


class ServerRefused(PeerError):
    """The server answered with an ERROR frame."""


class ConnectionLost(PeerError):
    """The connection broke, or the peer went quiet, in the middle of an exchange."""


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
    """One TCP connection to an edge server. Every socket operation has a timeout."""

    def __init__(self, host: str, port: int, fingerprint: dict[str, str], clock: Any, link: Any = None,
                 connect_timeout_s: float = 5.0, io_timeout_s: float = 30.0, secret: bytes | None = None,
                 limits: Limits | None = None, tls: ssl.SSLContext | None = None,
                 unshaped_answers: bool = False) -> None:
        """``unshaped_answers``: ask the server not to pace its answers on this connection (a
        background client: load on the server, not on the device's link)."""
        self.host, self.port = host, port
        self.fingerprint = fingerprint
        self.clock = clock
        self.link = link
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.secret = secret
        self.limits = limits or Limits()
        self.tls = tls
        self.unshaped_answers = unshaped_answers
        self.sock: socket.socket | None = None
        self.server_info: dict[str, Any] = {}

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            if self.link is not None:
                sock = self.link.connect(self.host, self.port, self.connect_timeout_s)
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise PeerError(f"cannot reach the edge server at {self.host}:{self.port} ({exc.strerror or exc}); "
                            "start it with splitcomp-serve or check server.address") from None
        sock.settimeout(self.io_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise HandshakeError(f"TLS with the edge server at {self.host}:{self.port} failed ({exc}); "
                                     "check server.tls on both sides") from None
        self.sock = sock
        hello = {"fingerprint": self.fingerprint, "clock_origin": self.clock.origin}
        if self.unshaped_answers:
            hello["link"] = "unshaped"
        try:
            self._send(encode_frame(Kind.HELLO, hello, secret=self.secret))
            self.server_info = self._expect(Kind.WELCOME).meta
        except ConnectionLost:
            raise  # the server went away: worth retrying later
        except PeerError as exc:  # it answered, and not with WELCOME: a different model or secret
            self.close()
            raise HandshakeError(str(exc)) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    # --- exchanges --------------------------------------------------------------------------
    def request_frame(self, request_id: int, cut_index: int, values: tuple[Any, ...], codec: Codec) -> bytes:
        """Encode the head's output for sending (the device's encode step)."""
        return encode_frame(Kind.REQUEST, request_meta(request_id, cut_index, self.clock.now()),
                            values, codec, secret=self.secret)

    def probe_frame(self, nbytes: int) -> bytes:
        """A probe of ``nbytes`` of filler."""
        return encode_frame(Kind.PROBE, probe_meta(self.clock.now()), [torch.zeros(nbytes, dtype=torch.uint8)],
                            secret=self.secret)

    def send(self, frame: bytes, pacer: Any = None) -> Any:
        """Send one encoded frame on the uplink (through ``pacer``: its ``TransferStats``)."""
        return self._send(frame, pacer)

    def receive(self) -> Answer:
        """Wait for the answer to the request sent last."""
        frame = self._expect(Kind.RESPONSE)
        report = self._report(frame)
        try:
            (logits,) = frame.values()
        except ValueError as exc:
            self.close()
            raise PeerError(f"the edge server's answer does not hold one logits tensor ({exc})") from None
        return Answer(logits, report, _frame_bytes(frame, self.secret), frame.meta.get("request"))

    def exchange(self, frame: bytes, pacer: Any = None) -> Reply:
        """Send one encoded request on the uplink and wait for the logits."""
        started = time.perf_counter()
        self._send(frame, pacer)
        sent = time.perf_counter()
        answer = self.receive()
        done = time.perf_counter()
        return Reply(answer.logits, answer.report, answer.bytes_down, answer.request, len(frame), sent - started,
                     done - started)

    def receive_probe_ack(self, timeout_s: float | None = None) -> ServerReport:
        """Wait (at most ``timeout_s``) for the answer to the probe sent last: the server's report."""
        if self.sock is not None and timeout_s is not None:
            if timeout_s <= 0:
                self.close()
                raise ConnectionLost("the probe's deadline passed before its answer")
            self.sock.settimeout(timeout_s)
        try:
            frame = self._expect(Kind.PROBE_ACK)
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.io_timeout_s)
        return self._report(frame)

    def _report(self, frame: Frame) -> ServerReport:
        try:
            return ServerReport.from_meta(frame.meta)
        except PeerError:
            self.close()
            raise

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, data: bytes, pacer: Any = None) -> Any:
        if self.sock is None:
            raise PeerError("not connected to the edge server")
        try:
            if pacer is None:
                self.sock.sendall(data)
                return None
            return pacer.send(self.sock, data, self.clock)
        except LinkTimeout:
            self.close()  # the stream is mid-message
            raise
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"lost the edge server while sending ({exc})") from None

    def _expect(self, kind: Kind) -> Frame:
        if self.sock is None:
            raise PeerError("not connected to the edge server")
        try:
            frame = read_frame(self.sock, self.limits, self.secret)
        except FrameError:
            self.close()  # a frame that breaks the protocol, or is not authentic
            raise
        except (PeerError, OSError) as exc:
            self.close()
            raise ConnectionLost(f"lost the edge server while waiting for its answer ({exc})") from None
        if frame.kind is Kind.ERROR:
            self.close()
            raise ServerRefused(f"the edge server refused: {frame.meta.get('error', 'no reason given')}")
        if frame.kind is not kind:
            self.close()
            raise PeerError(f"the edge server answered {frame.kind.name} where {kind.name} was expected")
        return frame


def _frame_bytes(frame: Frame, secret: bytes | None) -> int:
    """Bytes the frame took on the wire (what the downlink carried)."""
    return len(encode_frame(frame.kind, frame.meta, frame.items, secret=secret))
