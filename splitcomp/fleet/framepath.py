"""Throughput of the frame path's receiving side against a bare socket, measured in one run.

Both sides get the same bytes on the same loopback connection, sent by ``sendall`` from a frame
encoded beforehand: the bare receiver is a ``recv_into`` loop into one buffer it reuses; the
frame path is what the edge server does per request (:class:`~splitcomp.link.wire.FrameReader`
reading and checking prefix, header and payload, the MACs when a secret is set, the tensor
decoded as a view of the payload, the frame released into the payload pool). Repetitions of the
two alternate, so that both see the same load on the machine.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitcomp.link.auth import FrameAuth
from splitcomp.link.buffers import PayloadPool
from splitcomp.link.wire import FrameReader, Kind, encode_frame

SECRET = b"frame-path-benchmark-secret"


@dataclass(frozen=True)
class FramePathResult:
    nbytes: int
    raw_gbps: float
    frame_gbps: float
    mac_raw_gbps: float
    mac_frame_gbps: float

    @property
    def frame_over_raw(self) -> float:
        return self.frame_gbps / self.raw_gbps

    @property
    def mac_frame_over_raw(self) -> float:
        return self.mac_frame_gbps / self.mac_raw_gbps


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _timed_receive(client: socket.socket, data: bytes, receive: Callable[[], None]) -> float:
    """Seconds from the first byte sent to the receiver done."""
    thread = threading.Thread(target=receive)
    thread.start()
    start = time.perf_counter()
    client.sendall(data)
    thread.join()
    return time.perf_counter() - start


def measure_frame_path(nbytes: int = 16 << 20, reps: int = 10) -> FramePathResult:
    """Median receive throughput (Gbit/s) of ``nbytes`` tensors: bare socket vs frame path, each
    without and with MACs."""
    tensor = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    client, server = _loopback_pair()
    try:
        plain, mac = [], []
        for _ in range(reps):
            plain.append(_pair_of_runs(client, server, tensor, None))
            mac.append(_pair_of_runs(client, server, tensor, SECRET))
    finally:
        client.close()
        server.close()
    def gbps(seconds: list[float]) -> float:
        return 8 * nbytes / statistics.median(seconds) / 1e9
    return FramePathResult(nbytes, gbps([p[0] for p in plain]), gbps([p[1] for p in plain]),
                           gbps([m[0] for m in mac]), gbps([m[1] for m in mac]))


def _pair_of_runs(client: socket.socket, server: socket.socket, tensor: torch.Tensor,
                  secret: bytes | None) -> tuple[float, float]:
    """(bare socket seconds, frame path seconds) for one frame of ``tensor``."""
    sender = FrameAuth.device(secret) if secret else None
    receiver = FrameAuth.server(secret) if secret else None
    frame = encode_frame(Kind.REQUEST, {"cut": 0}, [tensor], auth=sender)
    scratch = bytearray(len(frame))

    def bare() -> None:
        view, got = memoryview(scratch), 0
        while got < len(scratch):
            got += server.recv_into(view[got:])

    raw_s = _timed_receive(client, frame, bare)
    reader = FrameReader(server, auth=receiver, pool=_POOL)
    received: list[torch.Tensor] = []

    def framed() -> None:
        got = reader.read()
        received.append(got.values()[0])
        got.release()  # the value is only checked for its size below: nothing reads the buffer after

    frame_s = _timed_receive(client, frame, framed)
    if received[0].numel() != tensor.numel():
        raise AssertionError("the frame path lost bytes")
    return raw_s, frame_s


_POOL = PayloadPool()
