"""Codec round trips: lossless codecs are bit-exact, lossy ones stay within their bound, the receiver
decodes by name from a default-constructed codec, and bytes sent are the payload length."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from splitcomp.link.codecs import (
    CODECS,
    EncodedTensor,
    Float16Codec,
    Int8Codec,
    JpegCodec,
    Lz4Codec,
    PngCodec,
    RawCodec,
    ZstdCodec,
    decode,
    tensor_to_bytes,
)

LOSSLESS = [RawCodec(), ZstdCodec(), ZstdCodec(level=19), Lz4Codec(), PngCodec()]
ODD_SHAPES = [(), (1,), (3, 5, 7), (2, 3, 1, 9), (0, 4)]


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _over_the_wire(encoded: EncodedTensor) -> EncodedTensor:
    """What the receiver rebuilds from the frame metadata: params and shape through JSON."""
    meta = json.loads(json.dumps({k: v for k, v in asdict(encoded).items() if k != "data"}))
    return EncodedTensor(meta["codec"], meta["dtype"], tuple(meta["shape"]), encoded.data, meta["params"])


def test_every_codec_is_registered_with_its_lossless_flag() -> None:
    assert {"raw", "zstd", "lz4", "float16", "int8", "png", "jpeg"} <= set(CODECS)
    assert {name for name, cls in CODECS.items() if cls.lossless} >= {"raw", "zstd", "lz4", "png"}
    assert not any(CODECS[name].lossless for name in ("float16", "int8", "jpeg"))


@pytest.mark.parametrize("codec", LOSSLESS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.uint8, torch.int64])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_lossless_codecs_are_bit_exact(codec, dtype, shape) -> None:
    x = _tensor(shape, dtype)
    encoded = codec.encode(x)
    y = decode(_over_the_wire(encoded))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert tensor_to_bytes(y) == tensor_to_bytes(x)  # bit-exact, NaN payloads and -0.0 included
    assert codec.nbytes(x) == len(encoded.data)


def test_compressors_shrink_redundant_tensors() -> None:
    x = torch.relu(torch.randn(1, 64, 28, 28))  # half zeros, like activations after ReLU
    raw = RawCodec().nbytes(x)
    assert ZstdCodec().nbytes(x) < 0.8 * raw
    assert Lz4Codec().nbytes(x) < raw


def test_float16_halves_floats_and_restores_their_dtype() -> None:
    x = torch.randn(2, 40, 7, 7)
    encoded = Float16Codec().encode(x)
    y = decode(_over_the_wire(encoded))
    assert y.dtype == torch.float32 and len(encoded.data) == x.numel() * 2
    assert torch.allclose(y, x, rtol=1e-3, atol=1e-4)
    assert torch.equal(decode(Float16Codec().encode(x.half())), x.half())  # fp16 itself is exact


def test_int8_stays_within_half_a_step_and_keeps_zero_exact() -> None:
    x = torch.relu(torch.randn(3, 16, 5, 5, dtype=torch.float64)) * 6 - 1
    encoded = Int8Codec().encode(x)
    y = decode(_over_the_wire(encoded))
    scale = encoded.params["scale"]
    assert y.dtype == x.dtype and len(encoded.data) == x.numel()
    assert float((y - x).abs().max()) <= scale / 2 + 1e-12
    assert scale == pytest.approx((float(x.max()) - float(x.min())) / 255)
    zeros = torch.zeros(4, 4)
    assert torch.equal(decode(Int8Codec().encode(zeros)), zeros)


_INT = torch.arange(12, dtype=torch.int64).reshape(3, 4)
_NOT_AN_IMAGE = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
_FLOAT_IMAGE = torch.rand(1, 3, 8, 8)
_INF = torch.tensor([1.0, float("inf")])


@pytest.mark.parametrize(("codec", "x"), [
    (Float16Codec(), _INT), (Float16Codec(), _NOT_AN_IMAGE),
    (Int8Codec(), _INT), (Int8Codec(), _NOT_AN_IMAGE), (Int8Codec(), _INF),
    (PngCodec(), _INT), (PngCodec(), _NOT_AN_IMAGE), (PngCodec(), _FLOAT_IMAGE),
    (JpegCodec(), _INT), (JpegCodec(), _NOT_AN_IMAGE), (JpegCodec(), _FLOAT_IMAGE),
], ids=lambda v: repr(v) if not isinstance(v, torch.Tensor) else f"{v.dtype}{tuple(v.shape)}")
def test_tensors_a_codec_does_not_handle_cross_raw(codec, x) -> None:
    encoded = codec.encode(x)
    assert len(encoded.data) == x.numel() * x.element_size()
    assert tensor_to_bytes(decode(_over_the_wire(encoded))) == tensor_to_bytes(x)


def _photo_batch(n: int = 2, channels: int = 3, size: int = 48) -> torch.Tensor:
    """Smooth image content (gradients plus a disc), as a camera would give."""
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for i in range(n):
        disc = ((yy - size / 2) ** 2 + (xx - size / 3 - i) ** 2 < (size / 4) ** 2) * 120
        planes = [(xx * (2 + c) + yy + disc + 10 * i) % 256 for c in range(channels)]
        images.append(np.stack(planes))
    return torch.from_numpy(np.stack(images).astype(np.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_is_exact_on_uint8_images_and_smaller(channels) -> None:
    x = _photo_batch(channels=channels)
    encoded = PngCodec().encode(x)
    assert torch.equal(decode(_over_the_wire(encoded)), x)
    assert len(encoded.data) < x.numel()
    assert len(encoded.params["sizes"]) == x.shape[0]


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_close_and_smaller(channels) -> None:
    x = _photo_batch(channels=channels, size=64)
    low, high = JpegCodec(quality=30).encode(x), JpegCodec(quality=95).encode(x)
    y = decode(_over_the_wire(high))
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert float((y.float() - x.float()).abs().mean()) < 6
    assert len(low.data) < len(high.data) < x.numel()


def test_decode_rejects_unknown_codec_and_bad_payloads() -> None:
    with pytest.raises(ValueError, match="unknown codec 'nope'"):
        decode(EncodedTensor("nope", "float32", (1,), b"\0" * 4))
    encoded = PngCodec().encode(_photo_batch())
    with pytest.raises(ValueError):
        decode(EncodedTensor("png", "uint8", encoded.shape, encoded.data[:-5], encoded.params))
    encoded = ZstdCodec().encode(torch.ones(10))
    with pytest.raises(ValueError):
        decode(EncodedTensor("zstd", "float32", (11,), encoded.data, encoded.params))
