"""A live server against hostile peers: bombs, declared sizes, slow and idle connections, replays,
malformed headers; and a device against a lying server. Memory is the server's (this process's)
resident peak, measured around each attack."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch

from splitcomp.link.auth import FrameAuth, new_nonce
from splitcomp.link.codecs import EncodedTensor, JpegCodec, Lz4Codec, PngCodec, RawCodec, ZstdCodec
from splitcomp.link.wire import MAGIC, PREFIX, VERSION, Frame, Kind, encode_frame
from splitcomp.profile.memory import peak_rss_growth_mib
from splitcomp.runtime.client import BadAnswer, EdgeClient, HandshakeError, ServerRefused
from splitcomp.runtime.handshake import Hello, Welcome
from splitcomp.runtime.raw_peer import RawPeer
from splitcomp.runtime.security import derive_key
from splitcomp.runtime.server import ServerSettings

KEY = derive_key("a secret of reasonable length")
BOMB_BYTES = 256 << 20


BATCH = 64  # the most a request may carry (ServerSettings.max_batch): the largest declared size
CUT0 = (BATCH, 3, 32, 32)  # cut 0 carries the uint8 image


def _zstd_bomb(content_size: bool) -> bytes:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    stream = compressor.compressobj(size=BOMB_BYTES if content_size else -1)
    chunk = bytes(1 << 20)
    return b"".join([*(stream.compress(chunk) for _ in range(BOMB_BYTES >> 20)), stream.flush()])


def _lz4_bomb() -> bytes:
    """LZ4 inflates at most ~250x: 40 MiB is what fits in a batch-64 request's byte budget."""
    import lz4.frame

    compressor, chunk = lz4.frame.LZ4FrameCompressor(), bytes(1 << 20)
    parts = [compressor.begin(source_size=0), *(compressor.compress(chunk) for _ in range(40))]
    return b"".join([*parts, compressor.flush()])


def _png_file(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind, data):
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    stream, row = zlib.compressobj(9), bytes(3 * width + 1)
    rows = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    ihdr = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join([b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr), chunk(b"IDAT", rows), chunk(b"IEND", b"")])


def _jpeg_file(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header claims ``width`` x ``height``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _image_batch(name: str, first: bytes) -> EncodedTensor:
    """A batch of 32x32 images whose first file is ``first``."""
    make = _png_file if name == "png" else _jpeg_file
    files = [first] + [make(32, 32)] * (BATCH - 1)
    return EncodedTensor(name, "uint8", CUT0, b"".join(files),
                         {"format": name.upper(), "sizes": [len(f) for f in files]})


BOMBS = {
    "zstd-sized": (ZstdCodec(), lambda: EncodedTensor("zstd", "uint8", CUT0, _zstd_bomb(True))),
    "zstd-streamed": (ZstdCodec(), lambda: EncodedTensor("zstd", "uint8", CUT0, _zstd_bomb(False))),
    "lz4": (Lz4Codec(), lambda: EncodedTensor("lz4", "uint8", CUT0, _lz4_bomb())),
    "png": (PngCodec(), lambda: _image_batch("png", _png_file(8000, 8000))),      # 192 MB of pixels
    "jpeg": (JpegCodec(), lambda: _image_batch("jpeg", _jpeg_file(20000, 20000))),
}


# --- bombs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_in_the_agreed_codec_stops_at_the_declared_size(tiny, live_server, name):
    _, _, _, fingerprint = tiny
    codec, make = BOMBS[name]
    server, port = live_server(codec=codec)
    bomb = make()
    peer = RawPeer(port)
    assert peer.hello(fingerprint).kind is Kind.WELCOME

    def attack():
        peer.frame(Kind.REQUEST, {"request": 1, "cut": 0, "t": 0.0}, [bomb])
        answer = peer.read()
        assert answer.kind is Kind.ERROR and answer.meta["code"] == "protocol", answer.meta

    assert peak_rss_growth_mib(attack) < 32
    assert server.rejected_frames == 1 and server.served == 0


def test_a_codec_that_was_not_agreed_is_refused_before_decoding(tiny, live_server):
    _, example, _, fingerprint = tiny
    server, port = live_server()  # raw only
    peer = RawPeer(port)
    peer.hello(fingerprint)
    peer.frame(Kind.REQUEST, {"request": 1, "cut": 0, "t": 0.0}, [example], Lz4Codec())
    answer = peer.read()
    assert answer.meta["code"] == "request" and "'lz4' was not agreed" in answer.meta["error"]
    assert server.rejected_frames == 1 and server.served == 0


# --- declared sizes before authentication ------------------------------------------------------
def test_declared_sizes_cost_nothing_before_a_frame_is_authenticated(tiny, live_server):
    """Four connections, each declaring 200 MiB in its first frame and then holding still."""
    _, _, _, fingerprint = tiny
    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, secret=KEY))
    header = json.dumps({"meta": {}, "items": [{"codec": "raw", "dtype": "uint8", "shape": [200 << 20],
                                                "nbytes": 200 << 20}]}).encode()
    peers = []

    def attack():
        for kind in (Kind.HELLO, Kind.REQUEST, Kind.HELLO, Kind.REQUEST):
            peer = RawPeer(port)
            peer.sock.sendall(PREFIX.pack(MAGIC, VERSION, int(kind), 1, len(header), 200 << 20) + header)
            peers.append(peer)
        time.sleep(1.0)

    assert peak_rss_growth_mib(attack) < 64
    for peer in peers:
        answer = peer.read()
        assert answer.kind is Kind.ERROR and answer.meta["code"] == "protocol"
        peer.close()


# --- slow, idle and too many connections --------------------------------------------------------
def test_a_trickling_handshake_is_cut_off_and_its_slot_comes_back(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=5.0, handshake_timeout_s=0.5, max_clients=2))
    hello = encode_frame(Kind.HELLO, Hello(fingerprint, 0.0, new_nonce()).meta())
    tricklers = [RawPeer(port) for _ in range(2)]
    stop = threading.Event()

    def trickle(peer):
        for byte in hello:  # one byte every 0.1 s: each read succeeds, the handshake never ends
            if stop.wait(0.1):
                return
            try:
                peer.sock.send(bytes([byte]))
            except OSError:
                return

    threads = [threading.Thread(target=trickle, args=(peer,)) for peer in tricklers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        with pytest.raises(ServerRefused, match="server.max_clients"):
            connect(port, fingerprint)  # every slot is taken by a trickler
        assert all(peer.closed_by_server(within_s=5.0) for peer in tricklers)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for peer in tricklers:
        peer.close()
    deadline = time.monotonic() + 5
    while server.clients and time.monotonic() < deadline:
        time.sleep(0.01)
    client = connect(port, fingerprint)
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        assert client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec())).logits.shape == (1, 5)
    assert server.rejected_frames == 2


class _FromAddress:
    """A link whose connections come from another loopback address."""

    def __init__(self, source: str) -> None:
        self.source = source

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout, source_address=(self.source, 0))


def test_slots_are_taken_at_accept_and_capped_per_address(tiny, live_server, connect):
    _, _, _, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=5.0, max_clients=3, max_clients_per_address=2))
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # never send a byte
    deadline = time.monotonic() + 5
    while server.clients < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.clients == 2
    with pytest.raises(ServerRefused, match="127.0.0.1 already holds 2 connections"):
        connect(port, fingerprint)
    other = connect(port, fingerprint, link=_FromAddress("127.0.0.2"))  # another address still gets in
    with pytest.raises(ServerRefused, match="already holds 3 connections"):
        connect(port, fingerprint, link=_FromAddress("127.0.0.3"))
    for sock in silent:
        sock.close()
    other.close()
    assert server.turned_away == 2


@pytest.mark.parametrize("secret", [None, KEY], ids=["plain", "authenticated"])
def test_an_idle_connection_is_closed_and_the_device_reconnects_quietly(tiny, live_server, connect, secret):
    model, example, plan, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=5.0, idle_timeout_s=0.3, secret=secret))
    client = connect(port, fingerprint, secret=secret)
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        values = tuple(head(example))
        assert torch.equal(client.exchange(client.request_frame(0, 1, values, RawCodec())).logits, model(example))
        frame = client.request_frame(1, 1, values, RawCodec())  # encoded before the server closes
        time.sleep(1.0)
        reply = client.exchange(frame)
        assert torch.equal(reply.logits, model(example)) and reply.request == 1
        client.send(client.probe_frame(100))
        assert client.receive_probe_ack().queue_len == 0
    assert client.reconnections == 1 and server.rejected_frames == 0


# --- replays ------------------------------------------------------------------------------------
def test_recorded_frames_replayed_are_refused(tiny, live_server):
    _, example, plan, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=5.0, secret=KEY))
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        values = tuple(head(example))
    legit = RawPeer(port, KEY)
    assert legit.hello(fingerprint).kind is Kind.WELCOME
    legit.frame(Kind.REQUEST, {"request": 7, "cut": 1, "t": 0.0}, values)
    assert legit.read().kind is Kind.RESPONSE
    hello, request = legit.sent

    legit.sock.sendall(request)  # the same request again on its own connection
    again = legit.read()
    assert again.kind is Kind.ERROR and again.meta["code"] == "auth"

    replayer = RawPeer(port)  # holds no key: sends the recording on a new connection
    replayer.sock.sendall(hello)
    welcome = _read_any(replayer)
    assert welcome.kind is Kind.WELCOME  # a recorded HELLO starts a session the replayer cannot use
    replayer.sock.sendall(request)
    assert _read_any(replayer).kind is Kind.ERROR
    assert server.served == 1 and server.rejected_frames == 2


def _read_any(peer: RawPeer) -> Frame:
    """The next frame, its MACs unchecked (the replayer has no key to check them with)."""
    head = peer.sock.recv(PREFIX.size, socket.MSG_WAITALL)
    _, _, kind, flags, header_len, payload_len = PREFIX.unpack(head)
    rest = peer.sock.recv(header_len + payload_len + (64 if flags else 0), socket.MSG_WAITALL)
    return Frame(Kind(kind), json.loads(rest[:header_len])["meta"])


def test_the_device_refuses_a_welcome_meant_for_another_hello(tiny, connect):
    _, _, _, fingerprint = tiny
    # what a server sent some earlier device: validly MAC'd (server frame 0), for another nonce
    old_welcome = encode_frame(Kind.WELCOME, Welcome(5, "cpu", new_nonce(), new_nonce()).meta(),
                               auth=FrameAuth.server(KEY))
    listener = socket.create_server(("127.0.0.1", 0))

    def replay_server():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(old_welcome)
            time.sleep(0.5)

    thread = threading.Thread(target=replay_server)
    thread.start()
    with pytest.raises(HandshakeError, match="another HELLO"):
        connect(listener.getsockname()[1], fingerprint, secret=KEY)
    thread.join()
    listener.close()


# --- malformed frames ---------------------------------------------------------------------------
MALFORMED = {
    "5000-digit cut": b'{"meta":{"request":1,"cut":' + b"7" * 5000 + b',"t":0},"items":[]}',
    "NaN time": b'{"meta":{"request":1,"cut":0,"t":NaN},"items":[]}',
    "deep nesting": b'{"meta":' + b"[" * 5000 + b"]" * 5000 + b',"items":[]}',
    "list as codec": b'{"meta":{"request":1,"cut":0,"t":0},"items":[{"codec":["raw"],"dtype":"uint8",'
                     b'"shape":[1,3,32,32],"nbytes":3072}]}',
    "string request id": b'{"meta":{"request":"x","cut":0,"t":0},"items":[]}',
    "boolean cut": b'{"meta":{"request":1,"cut":true,"t":0},"items":[]}',
    "missing items": b'{"meta":{"request":1,"cut":0}}',
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_every_malformed_frame_gets_an_error_frame_and_a_count(tiny, live_server, header, capfd, caplog):
    _, _, _, fingerprint = tiny
    server, port = live_server()
    peer = RawPeer(port)
    peer.hello(fingerprint)
    payload = b"\0" * 3072 if b'"nbytes":3072' in header else b""
    peer.sock.sendall(PREFIX.pack(MAGIC, VERSION, int(Kind.REQUEST), 0, len(header), len(payload)) + header + payload)
    answer = peer.read()
    assert answer.kind is Kind.ERROR and answer.meta["code"] in ("protocol", "request"), answer.meta
    assert server.rejected_frames == 1
    assert "Traceback" not in capfd.readouterr().err
    assert not any(record.exc_info for record in caplog.records)


def test_an_internal_failure_is_an_error_frame_not_a_traceback(tiny, live_server, connect, capfd, caplog):
    _, example, plan, fingerprint = tiny
    server, port = live_server()

    def broken(connection, frame):
        raise RuntimeError("a bug in the server")

    server._answer = broken
    client = connect(port, fingerprint)
    with pytest.raises(ServerRefused, match="failed on this frame"):
        client.exchange(client.request_frame(0, 0, (example,), RawCodec()))
    assert server.rejected_frames == 1
    assert "Traceback" not in capfd.readouterr().err
    assert not any(record.exc_info for record in caplog.records)


# --- refusals -----------------------------------------------------------------------------------
def test_a_refusal_to_an_unauthenticated_peer_does_not_disclose_the_fingerprint(tiny, live_server, connect):
    _, _, _, fingerprint = tiny
    _, port = live_server()
    other = dict(fingerprint, weights="0" * 16)
    with pytest.raises(HandshakeError) as refused:
        connect(port, other)
    message = str(refused.value)
    assert "different models: weights" in message and "start both with the same model" in message
    assert not any(value in message for value in fingerprint.values())

    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, secret=KEY))
    with pytest.raises(HandshakeError, match=fingerprint["weights"]):  # an authenticated peer is told more
        connect(port, other, secret=KEY)


# --- a lying server -----------------------------------------------------------------------------
def _logits_answer(logits, **meta_changes):
    def answer(meta):
        report = {"request": meta["request"], "queue_s": 0.0, "server_s": 0.001, "batch_size": 1, "queue_len": 0}
        report.update(meta_changes)
        return encode_frame(Kind.RESPONSE, report, [logits])
    return answer


LIES = {
    "int8 logits": _logits_answer(torch.zeros(1, 5, dtype=torch.int8)),
    "one class": _logits_answer(torch.zeros(1, 1)),
    "a bare number": _logits_answer(3),
    "NaN logits": _logits_answer(torch.full((1, 5), float("nan"))),
    "another request": _logits_answer(torch.zeros(1, 5), request=12345),
    "compressed logits": lambda meta: encode_frame(Kind.RESPONSE, {"request": meta["request"]}, [torch.zeros(1, 5)],
                                                   ZstdCodec()),
    "text in the report": _logits_answer(torch.zeros(1, 5), queue_s="soon"),
    "fractional batch": _logits_answer(torch.zeros(1, 5), batch_size=1.5),
    "two tensors": lambda meta: encode_frame(Kind.RESPONSE, {"request": meta["request"]},
                                             [torch.zeros(1, 5), torch.zeros(1, 5)]),
}


@pytest.mark.parametrize("lie", LIES.values(), ids=LIES.keys())
def test_the_device_refuses_a_bad_answer(tiny, fake_server, lie):
    _, example, plan, fingerprint = tiny
    port = fake_server(lie)
    client = EdgeClient("127.0.0.1", port, fingerprint, _Clock(), io_timeout_s=5.0, classes=5)
    client.connect()
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode(), pytest.raises(BadAnswer):
        client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec()))
    assert not client.connected


def test_a_truthful_fake_server_passes_the_same_checks(tiny, fake_server):
    _, example, plan, fingerprint = tiny
    port = fake_server(_logits_answer(torch.zeros(1, 5)))
    client = EdgeClient("127.0.0.1", port, fingerprint, _Clock(), io_timeout_s=5.0, classes=5)
    client.connect()
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        assert client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec())).logits.shape == (1, 5)


class _Clock:
    origin = 0.0

    def now(self) -> float:
        return 0.0
