import socket
import struct
import threading
import time

import pytest
import torch

from splitcomp.errors import PeerError
from splitcomp.link.auth import FrameAuth
from splitcomp.link.budget import ByteBudget
from splitcomp.link.codecs import ZstdCodec
from splitcomp.link.wire import (
    MAGIC,
    PREFIX,
    VERSION,
    AuthError,
    BusyError,
    ConnectionClosed,
    FrameError,
    FrameReader,
    IdleTimeout,
    Kind,
    Limits,
    Timeouts,
    VersionError,
    encode_frame,
    needs_resign,
    read_frame,
    resign,
)
from splitcomp.profile.memory import peak_rss_growth_mib

SHAPES = [(), (1,), (3, 5), (2, 3, 7, 5), (1, 0, 4)]
DTYPES = [torch.float32, torch.float16, torch.int8, torch.uint8]
KEY = bytes(range(32))


def _roundtrip(frame_bytes, limits=None, auth=None, **read):
    a, b = socket.socketpair()

    def send():
        try:
            a.sendall(frame_bytes)
            a.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader refused the frame and hung up

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return FrameReader(b, limits, auth).read(timeouts=Timeouts(idle_s=5, frame_s=5), **read)
    finally:
        b.close()
        sender.join()
        a.close()


def _random(shape, dtype):
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=dtype)


def _raw_frame(kind: Kind, header: bytes, payload: bytes = b"", flags: int = 0) -> bytes:
    return PREFIX.pack(MAGIC, VERSION, int(kind), flags, len(header), len(payload)) + header + payload


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_tensor_round_trip_is_bit_exact(shape, dtype):
    tensor = _random(shape, dtype)
    frame = _roundtrip(encode_frame(Kind.REQUEST, {"cut": 3}, [tensor]))
    (decoded,) = frame.values()
    assert frame.kind is Kind.REQUEST and frame.meta == {"cut": 3}
    assert decoded.dtype == dtype and decoded.shape == tensor.shape
    assert torch.equal(decoded.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_several_tensors_and_plain_values_keep_their_order():
    values = [torch.ones(2, 3), 7, torch.arange(5, dtype=torch.int8), (1, 2), None]
    decoded = _roundtrip(encode_frame(Kind.REQUEST, {}, values)).values()
    assert torch.equal(decoded[0], values[0]) and decoded[1] == 7
    assert torch.equal(decoded[2], values[2]) and decoded[3] == [1, 2] and decoded[4] is None


def test_non_contiguous_tensor_round_trips():
    tensor = torch.randn(4, 6).t()
    (decoded,) = _roundtrip(encode_frame(Kind.REQUEST, {}, [tensor])).values()
    assert torch.equal(decoded, tensor)


def test_a_large_raw_tensor_is_a_view_of_the_received_buffer():
    tensor = torch.randn(1 << 19)  # 2 MiB: received into its own mapping
    frame = _roundtrip(encode_frame(Kind.REQUEST, {}, [tensor, torch.arange(3)]))
    first, second = frame.values()
    assert torch.equal(first, tensor) and torch.equal(second, torch.arange(3))
    first[0] = 42.0  # writable, and shares memory with the payload
    assert frame.values()[0][0] == 42.0


def test_oversized_payload_is_refused_before_reading_it():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(1000)])
    with pytest.raises(PeerError, match="exceeds the limit"):
        _roundtrip(frame, Limits(max_payload_bytes=100))


def test_bad_magic_truncation_and_clean_close_are_told_apart():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(10)])
    with pytest.raises(FrameError, match="bad magic"):
        _roundtrip(b"XXXX" + frame[4:])
    with pytest.raises(FrameError, match="middle of a frame"):
        _roundtrip(frame[:-3])
    with pytest.raises(ConnectionClosed):
        _roundtrip(b"")


def test_another_protocol_version_is_a_clear_error():
    frame = bytearray(encode_frame(Kind.HELLO, {}))
    frame[4] = VERSION - 1
    with pytest.raises(VersionError, match=f"version {VERSION - 1} and this side version {VERSION}; run the same"):
        _roundtrip(bytes(frame))


def test_header_must_describe_the_payload_exactly():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(10)])
    assert _roundtrip(frame).payload_bytes == 40
    with pytest.raises(FrameError, match="declares 44 bytes"):
        _roundtrip(frame.replace(b'"nbytes":40', b'"nbytes":44') + b"\0" * 4)
    with pytest.raises(FrameError, match="describes 40 payload bytes but the frame carries 44"):
        header = frame[PREFIX.size : PREFIX.size + struct.unpack("!I", frame[8:12])[0]]
        _roundtrip(_raw_frame(Kind.REQUEST, header, b"\0" * 44))


def test_unpicklable_objects_are_never_sent():
    with pytest.raises(TypeError):
        encode_frame(Kind.REQUEST, {}, [object()])


# --- hostile headers --------------------------------------------------------------------------
@pytest.mark.parametrize("header", [
    b'{"meta":{"cut":' + b"9" * 5000 + b'},"items":[]}',          # a 5000-digit integer
    b'{"meta":{"t":NaN},"items":[]}',                             # NaN
    b'{"meta":{"t":1e999},"items":[]}',                           # overflows to inf
    b'{"meta":' + b"[" * 20000 + b"]" * 20000 + b',"items":[]}',  # deep nesting
    b'{"meta":{"a":[[[[[[[1]]]]]]]},"items":[]}',                 # nesting past the depth limit
    b'{"meta":{},"items":[{"codec":["raw"],"dtype":"uint8","shape":[1],"nbytes":1}]}',
    b'{"meta":{},"items":[{"codec":"raw","dtype":{"a":1},"shape":[1],"nbytes":1}]}',
    b'{"meta":{},"items":[{"value":{"a":1}}]}',                   # a value must be plain
    b'{"meta":{},"items":[{"codec":"raw","dtype":"uint8","shape":[true],"nbytes":1}]}',
    b'\xff\xfe{}',
], ids=lambda h: h[:40].decode(errors="replace"))
def test_hostile_headers_are_frame_errors(header):
    payload = b"\0" if b'"nbytes":1' in header else b""
    with pytest.raises(FrameError):
        _roundtrip(_raw_frame(Kind.REQUEST, header, payload), Limits(max_header_bytes=64 * 1024))


def test_items_are_limited_by_bytes_not_elements():
    # 1000 float64 zeros compress to a few bytes but decode to 8000: over a 4000-byte limit
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(1000, dtype=torch.float64)], ZstdCodec())
    with pytest.raises(FrameError, match="takes 8000 bytes"):
        _roundtrip(frame, Limits(max_payload_bytes=4000, max_decoded_bytes=4000))


def test_hello_carries_no_payload_and_a_small_header():
    with pytest.raises(FrameError, match="carries no payload"):
        _roundtrip(_raw_frame(Kind.HELLO, b'{"meta":{},"items":[]}', b"\0" * 10))
    with pytest.raises(FrameError, match="HELLO header of"):
        _roundtrip(encode_frame(Kind.HELLO, {"pad": "x" * 5000}))


def test_unexpected_kinds_are_refused_before_the_header():
    with pytest.raises(FrameError, match="unexpected REQUEST frame"):
        _roundtrip(encode_frame(Kind.REQUEST, {}, [torch.zeros(4)]), allowed=(Kind.HELLO,))


def test_the_receivers_check_runs_before_the_payload_is_read():
    seen = []

    def refuse(kind, meta, items):
        seen.append((kind, meta, [item.shape for item in items]))
        raise FrameError("not this cut")

    a, b = socket.socketpair()
    with a, b:
        frame = encode_frame(Kind.REQUEST, {"cut": 1}, [torch.zeros(2, 3)])
        a.sendall(frame[:-24])  # most of the payload never comes
        with pytest.raises(FrameError, match="not this cut"):
            FrameReader(b).read(check=refuse, timeouts=Timeouts(idle_s=5, frame_s=5))
    assert seen == [(Kind.REQUEST, {"cut": 1}, [(2, 3)])]


# --- authentication ---------------------------------------------------------------------------
def test_macs_authenticate_and_detect_tampering():
    frame = encode_frame(Kind.REQUEST, {"a": 1}, [torch.ones(3)], auth=FrameAuth.device(KEY))
    assert _roundtrip(frame, auth=FrameAuth.server(KEY)).meta == {"a": 1}
    with pytest.raises(AuthError, match="authentication failed"):
        _roundtrip(frame, auth=FrameAuth.server(bytes(32)))
    tampered = bytearray(frame)
    tampered[-40] ^= 1  # a payload byte
    with pytest.raises(AuthError, match="authentication failed"):
        _roundtrip(bytes(tampered), auth=FrameAuth.server(KEY))
    with pytest.raises(AuthError, match="sent none"):
        _roundtrip(encode_frame(Kind.REQUEST, {}, []), auth=FrameAuth.server(KEY))
    with pytest.raises(AuthError, match="no auth secret"):
        _roundtrip(frame)


def test_replayed_reordered_and_reflected_frames_fail_their_mac():
    device, server = FrameAuth.device(KEY), FrameAuth.server(KEY)
    first = encode_frame(Kind.REQUEST, {"n": 0}, [torch.ones(2)], auth=device)
    device.sent()
    second = encode_frame(Kind.REQUEST, {"n": 1}, [torch.ones(2)], auth=device)
    a, b = socket.socketpair()
    with a, b:
        reader = FrameReader(b, auth=server)
        a.sendall(first + first)  # the same frame twice on one connection
        assert reader.read().meta == {"n": 0}
        with pytest.raises(AuthError):
            reader.read()
    with pytest.raises(AuthError):  # frame 1 where frame 0 is due
        _roundtrip(second, auth=FrameAuth.server(KEY))
    with pytest.raises(AuthError):  # a device frame sent back to the device
        _roundtrip(first, auth=FrameAuth.device(KEY))


def test_an_unauthenticated_header_never_gets_a_payload_buffer():
    # a valid-looking header declaring 200 MiB, then a wrong header MAC: refused at once
    header = b'{"meta":{},"items":[{"codec":"raw","dtype":"uint8","shape":[209715200],"nbytes":209715200}]}'
    prefix = PREFIX.pack(MAGIC, VERSION, int(Kind.REQUEST), 1, len(header), 200 << 20)
    budget = ByteBudget(1 << 30)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(prefix + header + bytes(32))
        with pytest.raises(AuthError):
            FrameReader(b, auth=FrameAuth.server(KEY), budget=budget).read(timeouts=Timeouts(5, 5))
    assert budget.in_use == 0


def test_a_frame_is_signed_again_for_another_connection():
    old, new = FrameAuth.device(KEY), FrameAuth.device(bytes(32))
    frame = encode_frame(Kind.REQUEST, {"a": 1}, [torch.ones(3)], auth=old)
    assert not needs_resign(frame, old) and needs_resign(frame, new)
    again = resign(frame, new)
    assert len(again) == len(frame) and not needs_resign(again, new)
    assert _roundtrip(again, auth=FrameAuth.server(bytes(32))).meta == {"a": 1}
    assert not needs_resign(encode_frame(Kind.REQUEST, {}), new)  # nothing to sign


# --- memory and time --------------------------------------------------------------------------
def test_the_payload_buffer_grows_only_as_bytes_arrive():
    header = b'{"meta":{},"items":[{"codec":"raw","dtype":"uint8","shape":[419430400],"nbytes":419430400}]}'
    declared = PREFIX.pack(MAGIC, VERSION, int(Kind.REQUEST), 0, len(header), 400 << 20) + header
    a, b = socket.socketpair()
    with a, b:
        a.sendall(declared + b"\0" * 65536)  # 400 MiB declared, 64 KiB sent

        def read():
            with pytest.raises(FrameError, match="in time"):
                FrameReader(b, Limits(max_payload_bytes=1 << 30, max_decoded_bytes=1 << 30)).read(
                    timeouts=Timeouts(idle_s=5, frame_s=0.5))

        assert peak_rss_growth_mib(read) < 64


def test_a_byte_budget_caps_frames_in_flight():
    budget = ByteBudget(6000)
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(1000)])  # 4000 payload bytes
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame * 3)
        reader = FrameReader(b, budget=budget)
        held = reader.read()
        assert budget.in_use == 4000
        with pytest.raises(BusyError, match="retry later"):
            reader.read(timeouts=Timeouts(idle_s=5, frame_s=0.3))
        held.release()
        held.release()  # idempotent
        assert budget.in_use == 0
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame(Kind.REQUEST, {}, [torch.zeros(2000)]))  # 8000 bytes: more than the whole budget
        with pytest.raises(FrameError, match="in-flight budget"):
            FrameReader(b, budget=budget).read()


def test_a_trickling_peer_misses_the_frame_deadline():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(64)])
    a, b = socket.socketpair()
    stop = threading.Event()

    def trickle():
        for byte in frame:
            if stop.wait(0.05):
                return
            try:
                a.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        with pytest.raises(FrameError, match="did not arrive in time"):
            FrameReader(b).read(timeouts=Timeouts(idle_s=5, frame_s=0.5))  # every byte came within 5 s
    finally:
        stop.set()
        sender.join()
        a.close()
        b.close()


def test_silence_between_frames_is_an_idle_timeout():
    a, b = socket.socketpair()
    with a, b:
        started = time.monotonic()
        with pytest.raises(IdleTimeout):
            FrameReader(b).read(timeouts=Timeouts(idle_s=0.2, frame_s=5))
        assert time.monotonic() - started < 5


def test_read_frame_reads_one_frame():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame(Kind.PROBE, {}, [torch.zeros(3, dtype=torch.uint8)]))
        assert read_frame(b).payload_bytes == 3
