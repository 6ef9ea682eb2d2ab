"""A timing sink for measuring a link: where the last byte of each message arrived, and when.

Run on the server side of a link (``python -m splitcomp.link.sink HOST``; inside the server
namespace for ``tc``), it prints its port, accepts one connection, and answers every message
(an 8-byte length, then the payload) with the monotonic time at which the last byte arrived and
the payload's SHA-256. The link tests and ``experiments/bench_link.py`` time transfers with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Protocol

from splitcomp.errors import PeerError

REPLY = struct.Struct("!d32s")  # monotonic time of the last byte, SHA-256 of the payload
LENGTH = struct.Struct("!Q")


class SinkLink(Protocol):
    def server_command_prefix(self) -> list[str]: ...
    def server_bind_host(self) -> str: ...
    def server_connect_host(self) -> str: ...
    def connect(self, host: str, port: int, timeout: float) -> socket.socket: ...


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(host: str) -> None:
    """Answer the messages of one connection until the peer closes it."""
    listener = socket.create_server((host, 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    buf = bytearray(1 << 20)
    while (head := _recv_exact(conn, LENGTH.size)) is not None:
        left, digest, last_byte_t = LENGTH.unpack(head)[0], hashlib.sha256(), time.monotonic()
        while left:
            n = conn.recv_into(buf, min(left, len(buf)))
            if n == 0:
                raise SystemExit("sink: the peer closed mid-message")
            left -= n
            last_byte_t = time.monotonic()
            digest.update(memoryview(buf)[:n])
        conn.sendall(REPLY.pack(last_byte_t, digest.digest()))


def message(payload: bytes) -> bytes:
    """``payload`` framed for the sink."""
    return LENGTH.pack(len(payload)) + payload


def read_reply(sock: socket.socket) -> tuple[float, bytes]:
    """(monotonic time the last byte arrived, SHA-256 of the payload)."""
    reply = _recv_exact(sock, REPLY.size)
    if reply is None:
        raise PeerError("the sink closed the connection before it replied")
    return REPLY.unpack(reply)


@contextlib.contextmanager
def connected_sink(link: SinkLink, timeout: float = 10.0) -> Iterator[socket.socket]:
    """Start a sink on the server side of ``link`` and yield a device-side socket connected to it."""
    process = subprocess.Popen(
        [*link.server_command_prefix(), sys.executable, "-m", "splitcomp.link.sink", link.server_bind_host()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        sock = link.connect(link.server_connect_host(), port, timeout=timeout)
        try:
            yield sock
        finally:
            sock.close()
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    serve(sys.argv[1])
