"""A connection that speaks the edge server's protocol by hand, frame by frame, so that it can
break the protocol anywhere: the attacker of the server's hostile-peer tests and of
``experiments/bench_hostile.py``. Not a device: use :class:`splitcomp.runtime.client.EdgeClient`."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from splitcomp.link.auth import FrameAuth, new_nonce, session_key
from splitcomp.link.wire import Frame, FrameReader, Kind, Timeouts, encode_frame
from splitcomp.runtime.handshake import Hello, Welcome


class RawPeer:
    """One TCP connection to ``port`` on 127.0.0.1 from ``source``; with ``key``, an insider that
    holds the shared secret and signs what it sends. ``sent`` keeps every byte string sent, in
    order (a recording to replay)."""

    def __init__(self, port: int, key: bytes | None = None, source: str = "127.0.0.1",
                 timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0))
        self.key = key
        self.auth = FrameAuth.device(key) if key else None
        self.reader = FrameReader(self.sock, auth=self.auth)
        self.timeout_s = timeout_s
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.sock.sendall(data)
        if self.auth is not None:
            self.auth.sent()

    def encode(self, kind: Kind, meta: dict, values: Any = (), codec: Any = None) -> bytes:
        """A frame as this peer would sign it (sending it is up to the caller)."""
        return encode_frame(kind, meta, values, codec, auth=self.auth)

    def frame(self, kind: Kind, meta: dict, values: Any = (), codec: Any = None) -> None:
        self.send(self.encode(kind, meta, values, codec))

    def read(self) -> Frame:
        return self.reader.read(timeouts=Timeouts(idle_s=self.timeout_s, frame_s=self.timeout_s),
                                unauthenticated=(Kind.ERROR,))

    def hello(self, fingerprint: dict) -> Frame:
        """Send a HELLO for ``fingerprint`` and return the answer; on a WELCOME an insider switches
        to the session key, as a device does."""
        nonce = new_nonce()
        self.frame(Kind.HELLO, Hello(fingerprint, time.time(), nonce).meta())
        answer = self.read()
        if answer.kind is Kind.WELCOME and self.auth is not None:
            self.auth.use_session_key(session_key(self.key, nonce, Welcome.parse(answer.meta).nonce))
        return answer

    def drain(self, timeout_s: float) -> bytes:
        """What the server sends until it closes the connection (or ``timeout_s`` passes)."""
        self.sock.settimeout(timeout_s)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                out += chunk
        return out

    def closed_by_server(self, within_s: float = 5.0) -> bool:
        self.sock.settimeout(within_s)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
