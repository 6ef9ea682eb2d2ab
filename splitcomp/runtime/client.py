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
from splitcomp.link.wire import Frame, Kind, Limits, encode_frame, read_frame


class HandshakeError(PeerError):
    """The server refused the session (a different model, or a bad secret): retrying cannot help."""


@dataclass
class Reply:
    """What one request brought back, with the device-side timings of its exchange."""

    logits: torch.Tensor
    report: dict[str, Any]          # the server's load report and its own timings
    bytes_up: int                   # frame bytes sent (header included)
    bytes_down: int
    send_s: float                   # device: first byte handed to the link .. last byte handed
    round_trip_s: float             # device: first byte sent .. whole response received
    uplink_trace_rate_bps: float    # mean trace rate during the uplink transfer (nan unshaped)


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
                 limits: Limits | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.fingerprint = fingerprint
        self.clock = clock
        self.link = link
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.secret = secret
        self.limits = limits or Limits()
        self.tls = tls
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
        try:
            self._send(encode_frame(Kind.HELLO, {"fingerprint": self.fingerprint,
                                                 "clock_origin": self.clock.origin}, secret=self.secret))
            self.server_info = self._expect(Kind.WELCOME).meta
        except PeerError as exc:
            self.close()
            if "refused" in str(exc) or "authentication" in str(exc):
                raise HandshakeError(str(exc)) from None
            raise
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
        return encode_frame(Kind.REQUEST, {"request": request_id, "cut": cut_index, "t": self.clock.now()},
                            values, codec, secret=self.secret)

    def exchange(self, frame: bytes, pacer: Any = None) -> Reply:
        """Send one encoded request on the uplink and wait for the logits."""
        started = time.perf_counter()
        stats = self._send(frame, pacer)
        sent = time.perf_counter()
        reply = self._expect(Kind.RESPONSE)
        done = time.perf_counter()
        (logits,) = reply.values()
        rate = getattr(stats, "trace_rate_bps", float("nan")) if stats is not None else float("nan")
        return Reply(logits, reply.meta, len(frame), reply.payload_bytes, sent - started, done - started, rate)

    def probe(self, nbytes: int, pacer: Any = None) -> float:
        """Send ``nbytes`` of filler and wait for the ack: seconds the round trip took."""
        frame = encode_frame(Kind.PROBE, {}, [torch.zeros(nbytes, dtype=torch.uint8)], secret=self.secret)
        started = time.perf_counter()
        self._send(frame, pacer)
        self._expect(Kind.PROBE_ACK)
        return time.perf_counter() - started

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, data: bytes, pacer: Any = None) -> Any:
        if self.sock is None:
            raise PeerError("not connected to the edge server")
        try:
            if pacer is None:
                self.sock.sendall(data)
                return None
            return pacer.send(self.sock, data, self.clock)
        except OSError as exc:
            self.close()
            raise PeerError(f"lost the edge server while sending ({exc})") from None

    def _expect(self, kind: Kind) -> Frame:
        if self.sock is None:
            raise PeerError("not connected to the edge server")
        try:
            frame = read_frame(self.sock, self.limits, self.secret)
        except (PeerError, OSError) as exc:
            self.close()
            raise PeerError(f"lost the edge server while waiting for its answer ({exc})") from None
        if frame.kind is Kind.ERROR:
            self.close()
            raise PeerError(f"the edge server refused: {frame.meta.get('error', 'no reason given')}")
        if frame.kind is not kind:
            self.close()
            raise PeerError(f"the edge server answered {frame.kind.name} where {kind.name} was expected")
        return frame
