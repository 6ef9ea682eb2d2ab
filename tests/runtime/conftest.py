import socket
import threading

import pytest
import torch
from torch import nn

from splitcomp.errors import PeerError
from splitcomp.link.auth import new_nonce
from splitcomp.link.codecs import RawCodec
from splitcomp.link.shaping import ScenarioClock
from splitcomp.link.wire import FrameReader, Kind, encode_frame
from splitcomp.runtime.client import EdgeClient
from splitcomp.runtime.fingerprint import model_fingerprint
from splitcomp.runtime.handshake import Hello, Welcome
from splitcomp.runtime.process import bind_listener
from splitcomp.runtime.server import EdgeServer, LoadEffects, ServerSettings
from splitcomp.runtime.tails import TailBank
from splitcomp.split import analyze


class TinyNet(nn.Module):
    """uint8 image in, logits out, with a skip connection so some cuts carry two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        x = torch.relu(self.stem(x))
        x = torch.relu(self.body(x)) + x
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="session")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    plan = analyze(model, example, codec=RawCodec())
    fingerprint = model_fingerprint(model, tuple(example.shape), example.dtype, RawCodec())
    return model, example, plan, fingerprint


@pytest.fixture
def live_server(tiny):
    """An EdgeServer serving the tiny model on a free loopback port, in this process."""
    _, example, plan, fingerprint = tiny
    servers = []

    def start(load_model=None, settings=None, codec=None):
        server = EdgeServer(TailBank(plan, example, torch.device("cpu")), fingerprint, LoadEffects(load_model),
                            settings=settings or ServerSettings(io_timeout_s=5.0), codec=codec)
        listener = bind_listener("127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
        thread.start()
        servers.append((server, listener, thread))
        return server, listener.getsockname()[1]

    yield start
    for server, listener, thread in servers:
        server.stop()
        thread.join(timeout=5)
        listener.close()


def _connect(port, fingerprint, **kwargs):
    client = EdgeClient("127.0.0.1", port, fingerprint, ScenarioClock(), io_timeout_s=5.0, **kwargs)
    client.connect()
    return client


@pytest.fixture
def connect():
    """connect(port, fingerprint) -> a handshaken EdgeClient."""
    return _connect


@pytest.fixture
def fake_server():
    """fake_server(answer) -> port of a server that takes any HELLO, acknowledges probes and
    answers each REQUEST (its meta) with the frame bytes ``answer(meta)`` returns: a server
    that lies."""
    listeners = []

    def start(answer):
        listener = bind_listener("127.0.0.1", 0)
        listeners.append(listener)

        def serve_one(conn):
            with conn:
                reader = FrameReader(conn)
                try:
                    hello = Hello.parse(reader.read(allowed=(Kind.HELLO,)).meta)
                    conn.sendall(encode_frame(Kind.WELCOME, Welcome(99, "cpu", new_nonce(), hello.nonce).meta()))
                    while True:
                        frame = reader.read()
                        if frame.kind is Kind.PROBE:
                            conn.sendall(encode_frame(Kind.PROBE_ACK, {"bytes": frame.payload_bytes}))
                        else:
                            conn.sendall(answer(frame.meta))
                except (PeerError, OSError):
                    pass

        def accept_loop():
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        listener.close()


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
