import socket

import pytest
import torch

from splitcomp.errors import PeerError
from splitcomp.link.wire import Kind, Limits, encode_frame, read_frame

SHAPES = [(), (1,), (3, 5), (2, 3, 7, 5), (1, 0, 4)]
DTYPES = [torch.float32, torch.float16, torch.int8, torch.uint8]


def _roundtrip(frame_bytes, limits=None, secret=None):
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(frame_bytes)
        a.shutdown(socket.SHUT_WR)
        return read_frame(b, limits or Limits(), secret)


def _random(shape, dtype):
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=dtype)


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


def test_oversized_payload_is_refused_before_reading_it():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(1000)])
    with pytest.raises(PeerError, match="exceeds the limit"):
        _roundtrip(frame, Limits(max_payload_bytes=100))


def test_bad_magic_and_truncation_are_clear_errors():
    frame = encode_frame(Kind.REQUEST, {}, [torch.zeros(10)])
    with pytest.raises(PeerError, match="bad magic"):
        _roundtrip(b"XXXX" + frame[4:])
    with pytest.raises(PeerError, match="closed the connection"):
        _roundtrip(frame[:-3])


def test_header_must_describe_the_payload_exactly():
    frame = bytearray(encode_frame(Kind.REQUEST, {}, [torch.zeros(10)]))
    frame[-41] ^= 0  # untouched payload stays valid
    good = _roundtrip(bytes(frame))
    assert good.payload_bytes == 40
    lying = bytes(frame).replace(b'"nbytes":40', b'"nbytes":44')
    with pytest.raises(PeerError, match="describes"):
        _roundtrip(lying)


def test_unpicklable_objects_are_never_sent():
    with pytest.raises(TypeError):
        encode_frame(Kind.REQUEST, {}, [object()])


def test_hmac_authenticates_and_detects_tampering():
    frame = encode_frame(Kind.REQUEST, {"a": 1}, [torch.ones(3)], secret=b"k1")
    assert _roundtrip(frame, secret=b"k1").meta == {"a": 1}
    with pytest.raises(PeerError, match="authentication failed"):
        _roundtrip(frame, secret=b"other")
    with pytest.raises(PeerError, match="did not authenticate"):
        _roundtrip(encode_frame(Kind.REQUEST, {}, []), secret=b"k1")
