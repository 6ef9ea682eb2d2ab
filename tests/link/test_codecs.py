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


# ------------------------------------------------------------------ hostile payloads (bombs) ------

BOMB_BYTES = 256 << 20  # what each bomb inflates to; the decoder may hold a tiny fraction of it
CHUNK = bytes(1 << 20)


def _zstd_bomb(content_size: bool) -> bytes:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    stream = compressor.compressobj(size=BOMB_BYTES if content_size else -1)
    return b"".join([*(stream.compress(CHUNK) for _ in range(BOMB_BYTES // len(CHUNK))), stream.flush()])


def _lz4_bomb(content_size: bool) -> bytes:
    import lz4.frame

    compressor = lz4.frame.LZ4FrameCompressor()
    parts = [compressor.begin(source_size=BOMB_BYTES if content_size else 0)]
    parts += [compressor.compress(CHUNK) for _ in range(BOMB_BYTES // len(CHUNK))]
    return b"".join([*parts, compressor.flush()])


def _png(width: int, height: int, extra_chunks: list[tuple[bytes, bytes]] = (), rows: bytes | None = None) -> bytes:
    """A grey PNG of any declared size; its pixel data (zeros unless ``rows``) is streamed
    through zlib so that no buffer of its full size is ever made here."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    if rows is None:
        stream, row = zlib.compressobj(9), bytes(width + 1)
        rows = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    else:
        rows = zlib.compress(rows)
    ihdr = struct.pack("!IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"".join([b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr), *(chunk(k, d) for k, d in extra_chunks),
                     chunk(b"IDAT", rows), chunk(b"IEND", b"")])


def _jpeg_header_only(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header claims ``width`` x ``height``."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _decode_refused(encoded: EncodedTensor) -> None:
    with pytest.raises(ValueError):
        decode(encoded)


@pytest.mark.parametrize("maker, codec", [
    (lambda: _zstd_bomb(content_size=True), "zstd"),
    (lambda: _zstd_bomb(content_size=False), "zstd"),
    (lambda: _lz4_bomb(content_size=True), "lz4"),
    (lambda: _lz4_bomb(content_size=False), "lz4"),
], ids=["zstd-sized", "zstd-streamed", "lz4-sized", "lz4-streamed"])
def test_compression_bombs_stop_at_the_declared_size(maker, codec) -> None:
    from splitcomp.profile.memory import peak_rss_growth_mib

    bomb, shape = maker(), (1, 2 << 20)
    CODECS[codec]().check_encoded("uint8", shape, {}, len(bomb))  # passes for a compressed 2 MiB tensor:
    encoded = EncodedTensor(codec, "uint8", shape, bomb, {})      # the decoder itself must stop it
    assert peak_rss_growth_mib(lambda: _decode_refused(encoded)) < 64


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_bombs_are_refused_before_their_pixels_are_decoded() -> None:
    from splitcomp.profile.memory import peak_rss_growth_mib

    huge_png = _png(12000, 12000)  # 144 Mpixel of zeros in ~150 KB
    huge_jpeg = _jpeg_header_only(30000, 30000)
    shape = (1, 1, 1024, 1024)  # declared: a 1 Mpixel image, for which both files pass as a size
    for codec, data in (("png", huge_png), ("jpeg", huge_jpeg)):
        params = {"format": codec.upper(), "sizes": [len(data)]}
        CODECS[codec]().check_encoded("uint8", shape, params, len(data))
        encoded = EncodedTensor(codec, "uint8", shape, data, params)
        assert peak_rss_growth_mib(lambda encoded=encoded: _decode_refused(encoded)) < 64


def test_images_are_opened_only_in_the_agreed_format_mode_and_chunks() -> None:
    import zlib

    good = _png(8, 8, rows=bytes(9 * 8))
    assert decode(EncodedTensor("png", "uint8", (1, 1, 8, 8), good, {"format": "PNG", "sizes": [len(good)]})).shape \
        == (1, 1, 8, 8)
    text_bomb = _png(8, 8, [(b"zTXt", b"k\0\0" + zlib.compress(bytes(1 << 20)))] * 4, rows=bytes(9 * 8))
    as_jpeg = JpegCodec().encode(_photo_batch(1, 1, 8))
    for encoded in [
        EncodedTensor("png", "uint8", (1, 1, 8, 8), text_bomb, {"format": "PNG", "sizes": [len(text_bomb)]}),
        EncodedTensor("png", "uint8", (1, 3, 8, 8), good, {"format": "PNG", "sizes": [len(good)]}),  # mode L
        EncodedTensor("png", "uint8", (1, 1, 8, 8), as_jpeg.data, {"format": "PNG", "sizes": [as_jpeg.nbytes]}),
        EncodedTensor("jpeg", "uint8", (1, 1, 8, 8), good, {"format": "JPEG", "sizes": [len(good)]}),
    ]:
        _decode_refused(encoded)


@pytest.mark.parametrize(("codec", "dtype", "shape", "params", "nbytes"), [
    ("raw", "float32", (4,), {}, 15),
    ("zstd", "uint8", (16,), {}, 10_000),                              # far more than 16 bytes compress to
    ("lz4", "uint8", (16,), {}, 10_000),
    ("float16", "int64", (4,), {"wire": "float16"}, 8),                # float16 carries floats only
    ("float16", "float32", (4,), {"fallback": "raw"}, 8),              # raw fallback is the full size
    ("int8", "float32", (4,), {"scale": float("nan"), "zero_point": 0}, 4),
    ("int8", "float32", (4,), {"scale": 1.0, "zero_point": 300}, 4),
    ("png", "uint8", (2, 3, 8, 8), {"format": "PNG", "sizes": [10]}, 10),   # one size for two images
    ("png", "uint8", (1, 3, 8, 8), {"format": "GIF", "sizes": [10]}, 10),
    ("png", "float32", (1, 3, 8, 8), {"format": "PNG", "sizes": [10]}, 10),
    ("jpeg", "uint8", (1, 3, 8, 8), {"format": "JPEG", "sizes": [10 ** 6]}, 10 ** 6),
])
def test_declarations_no_encoder_makes_are_refused_before_reading(codec, dtype, shape, params, nbytes) -> None:
    with pytest.raises(ValueError):
        CODECS[codec]().check_encoded(dtype, shape, params, nbytes)


@pytest.mark.parametrize("codec", [RawCodec(), ZstdCodec(), Lz4Codec(), Float16Codec(), Int8Codec(), PngCodec(),
                                   JpegCodec()], ids=repr)
def test_what_every_codec_encodes_passes_its_own_check(codec) -> None:
    for x in [_photo_batch(2, 3, 16), torch.randn(2, 5, 3), torch.arange(6).reshape(2, 3)]:
        encoded = codec.encode(x)
        codec.check_encoded(encoded.dtype, encoded.shape, encoded.params, encoded.nbytes)
