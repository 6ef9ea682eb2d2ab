"""Tensor codecs: how a tensor that crosses the cut becomes bytes on the wire and back.

Every codec turns a tensor into an :class:`EncodedTensor` (JSON-safe metadata plus a raw byte
payload) and back. The bytes a codec produces are exactly what the link carries and what the
bottleneck finder counts, so the two can never disagree.

The receiver cannot trust what a peer declares. :meth:`Codec.check_encoded` refuses a declaration
no honest encoder produces (from dtype, shape, params and byte count alone, before a payload byte
is read), and every decoder produces at most the declared tensor's bytes (+1 to catch a lie):
compressed data never expands beyond what the header announced.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# dtypes allowed on the wire; anything else is refused before a byte is read or written.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAME_OF_DTYPE = {dtype: name for name, dtype in WIRE_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Wire name of a torch dtype; raises ValueError for dtypes the wire does not carry."""
    try:
        return _NAME_OF_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot cross the link; supported: {sorted(WIRE_DTYPES)}") from None


def wire_dtype(name: str) -> torch.dtype:
    """Torch dtype for a wire name; raises ValueError for unknown names."""
    try:
        return WIRE_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown wire dtype {name!r}; supported: {sorted(WIRE_DTYPES)}") from None


@dataclass
class EncodedTensor:
    """One tensor as it travels: which codec made it, the original dtype and shape, codec
    parameters (JSON-safe, e.g. a quantisation scale) and the payload bytes."""

    codec: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor in C order (copied to CPU first)."""
    array = tensor.detach().to("cpu").contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def itemsize(dtype: str) -> int:
    """Bytes per element of a wire dtype."""
    return torch.empty((), dtype=wire_dtype(dtype)).element_size()


def expected_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    """Raw bytes of a ``dtype`` tensor of ``shape`` (exact Python integers: no overflow)."""
    return math.prod(int(d) for d in shape) * itemsize(dtype)


def tensor_from_bytes(data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`; checks that the byte count matches dtype and shape.

    A writable, aligned buffer (a received frame's payload) is shared, not copied; read-only
    bytes are copied once, so the tensor is always writable."""
    torch_dtype = wire_dtype(dtype)
    expected = expected_nbytes(dtype, shape)
    if len(data) != expected:
        raise ValueError(f"payload has {len(data)} bytes but a {dtype} tensor of shape {tuple(shape)} needs {expected}")
    if expected == 0:
        return torch.empty(tuple(shape), dtype=torch_dtype)
    np_dtype = torch.empty((), dtype=torch_dtype).numpy().dtype.newbyteorder("<")
    array = np.frombuffer(data, dtype=np_dtype)
    if not array.flags.writeable or not array.flags.aligned:
        array = array.copy()
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False)).reshape(tuple(shape))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_raw(dtype: str, shape: tuple[int, ...], nbytes: int, codec_name: str) -> None:
    expected = expected_nbytes(dtype, shape)
    _require(nbytes == expected, f"{codec_name} item declares {nbytes} bytes but a raw {dtype} "
                                 f"tensor of shape {list(shape)} has {expected}")


class Codec(ABC):
    """Turns a tensor into bytes and back. Subclasses set ``name`` and ``lossless``."""

    name: str = ""
    lossless: bool = True

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> EncodedTensor: ...

    @abstractmethod
    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        """The tensor back; never produces more than the declared tensor's bytes (+1)."""

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        """Raise ValueError when no honest encoder of this codec declares this item. Called by the
        receiver before a byte of the payload is read; the default is the raw tensor's size."""
        _check_raw(dtype, shape, nbytes, self.name)

    def nbytes(self, tensor: torch.Tensor) -> int:
        """Bytes this codec sends for ``tensor`` (by really encoding it: compressors depend on content)."""
        return self.encode(tensor).nbytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RawCodec(Codec):
    """Lossless: the tensor's own bytes."""

    name = "raw"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        return EncodedTensor(self.name, dtype_name(tensor.dtype), tuple(tensor.shape), tensor_to_bytes(tensor))

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        return tensor_from_bytes(encoded.data, encoded.dtype, encoded.shape)

    def nbytes(self, tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()


# name -> codec class; the receiver decodes by the name the frame carries.
CODECS: dict[str, type[Codec]] = {RawCodec.name: RawCodec}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator that makes a codec decodable by name on the receiving side."""
    CODECS[cls.name] = cls
    return cls


def codec_named(name: Any) -> Codec:
    """A default-constructed codec of ``name`` (what a receiver decodes with); ValueError if unknown."""
    codec_cls = CODECS.get(name) if isinstance(name, str) else None
    if codec_cls is None:
        raise ValueError(f"unknown codec {name!r}; known: {sorted(CODECS)}")
    return codec_cls()


def decode(encoded: EncodedTensor) -> torch.Tensor:
    """Decode with the codec named in the metadata (receiver side), after checking that the
    declaration is one that codec can produce."""
    codec = codec_named(encoded.codec)
    codec.check_encoded(encoded.dtype, tuple(encoded.shape), encoded.params, len(encoded.data))
    return codec.decode(encoded)


def _compressed_bound(raw_nbytes: int) -> int:
    """Most bytes zstd or LZ4 may emit for ``raw_nbytes`` of input (both stay well under it)."""
    return raw_nbytes + raw_nbytes // 64 + 4096


def _window_limit(raw_nbytes: int) -> int:
    """Largest zstd window a frame of ``raw_nbytes`` needs (a power of two, at least 1 MiB)."""
    return max(1 << 20, 1 << max(raw_nbytes - 1, 1).bit_length())


def _check_fallback(params: dict[str, Any], dtype: str, shape: tuple[int, ...], nbytes: int, name: str) -> None:
    _require(params.get("fallback") == "raw", f"{name} item has unexpected params {sorted(params)}")
    _check_raw(dtype, shape, nbytes, name)


# ------------------------------------------------------------------------------ lossless compressors

def _raw_fallback(codec_name: str, tensor: torch.Tensor) -> EncodedTensor:
    """The tensor's own bytes under ``codec_name``, marked so the decoder reads them as raw."""
    return EncodedTensor(codec_name, dtype_name(tensor.dtype), tuple(tensor.shape), tensor_to_bytes(tensor),
                         {"fallback": "raw"})


@register_codec
class ZstdCodec(Codec):
    """Lossless: the raw bytes compressed with Zstandard at ``level`` (1 fast .. 19 small)."""

    name = "zstd"
    lossless = True

    def __init__(self, level: int = 3) -> None:
        self.level = int(level)

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        import zstandard

        data = zstandard.ZstdCompressor(level=self.level).compress(tensor_to_bytes(tensor))
        return EncodedTensor(self.name, dtype_name(tensor.dtype), tuple(tensor.shape), data, {"level": self.level})

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        bound = _compressed_bound(expected_nbytes(dtype, shape))
        _require(nbytes <= bound, f"zstd item of {nbytes} bytes is larger than its tensor could compress to ({bound})")

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import zstandard

        expected = expected_nbytes(encoded.dtype, encoded.shape)
        if expected == 0:
            return tensor_from_bytes(b"", encoded.dtype, tuple(encoded.shape))
        try:
            # A frame's own content size decides what decompress() allocates: check it first.
            frame = zstandard.get_frame_parameters(encoded.data)
            _require(frame.content_size in (expected, zstandard.CONTENTSIZE_UNKNOWN),
                     f"zstd frame declares {frame.content_size} bytes where the header says {expected}")
            decompressor = zstandard.ZstdDecompressor(max_window_size=_window_limit(expected))
            data = decompressor.decompress(encoded.data, max_output_size=expected + 1)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd payload: {exc}") from None
        return tensor_from_bytes(data, encoded.dtype, tuple(encoded.shape))

    def __repr__(self) -> str:
        return f"ZstdCodec(level={self.level})"


@register_codec
class Lz4Codec(Codec):
    """Lossless: the raw bytes compressed with LZ4 (frame format); very fast, compresses less."""

    name = "lz4"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        import lz4.frame

        data = lz4.frame.compress(tensor_to_bytes(tensor), store_size=True)
        return EncodedTensor(self.name, dtype_name(tensor.dtype), tuple(tensor.shape), data)

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        bound = _compressed_bound(expected_nbytes(dtype, shape))
        _require(nbytes <= bound, f"lz4 item of {nbytes} bytes is larger than its tensor could compress to ({bound})")

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import lz4.frame

        expected = expected_nbytes(encoded.dtype, encoded.shape)
        try:
            declared = lz4.frame.get_frame_info(encoded.data)["content_size"]
            _require(declared in (0, expected),  # 0: the frame does not say
                     f"lz4 frame declares {declared} bytes where the header says {expected}")
            decompressor = lz4.frame.LZ4FrameDecompressor()
            data = decompressor.decompress(encoded.data, max_length=expected + 1)
            _require(decompressor.eof, "lz4 payload holds more (or less) than the declared tensor")
        except RuntimeError as exc:  # what lz4 raises on a corrupt frame
            raise ValueError(f"corrupt lz4 payload: {exc}") from None
        return tensor_from_bytes(data, encoded.dtype, tuple(encoded.shape))


# -------------------------------------------------------------------------------------- lossy floats

@register_codec
class Float16Codec(Codec):
    """Lossy: float32/float64 tensors cross as float16 and are cast back to their own dtype on
    arrival (half the bytes of float32). Other dtypes cross raw. Values beyond float16's range
    (65504) become inf."""

    name = "float16"
    lossless = False

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        if tensor.dtype not in (torch.float32, torch.float64):
            return _raw_fallback(self.name, tensor)
        return EncodedTensor(self.name, dtype_name(tensor.dtype), tuple(tensor.shape),
                             tensor_to_bytes(tensor.to(torch.float16)), {"wire": "float16"})

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        if "wire" not in params:
            _check_fallback(params, dtype, shape, nbytes, self.name)
            return
        _require(params["wire"] == "float16" and dtype in ("float32", "float64"),
                 f"float16 item must carry a float32/float64 tensor as float16, not {dtype} as {params['wire']!r}")
        _check_raw("float16", shape, nbytes, self.name)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        shape = tuple(encoded.shape)
        if encoded.params.get("wire") != "float16":
            return tensor_from_bytes(encoded.data, encoded.dtype, shape)
        return tensor_from_bytes(encoded.data, "float16", shape).to(wire_dtype(encoded.dtype))


@register_codec
class Int8Codec(Codec):
    """Lossy: affine per-tensor quantisation of float tensors to int8, ``q = round(x / scale) + zero_point``
    with ``scale = (max - min) / 255`` over the tensor (the range always includes 0), ``scale`` and
    ``zero_point`` in the params. The error is at most ``scale / 2`` per element. Non-float tensors and
    float tensors with inf/nan cross raw."""

    name = "int8"
    lossless = False

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        if not tensor.dtype.is_floating_point or tensor.dtype not in (torch.float16, torch.float32, torch.float64):
            return _raw_fallback(self.name, tensor)
        x = tensor.detach().to("cpu", torch.float64)
        if x.numel() == 0 or not bool(torch.isfinite(x).all()):
            return _raw_fallback(self.name, tensor)
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(round(-128 - low / scale))
        q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127).to(torch.int8)
        return EncodedTensor(self.name, dtype_name(tensor.dtype), tuple(tensor.shape), tensor_to_bytes(q),
                             {"scale": scale, "zero_point": zero_point})

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        if "scale" not in params:
            _check_fallback(params, dtype, shape, nbytes, self.name)
            return
        scale, zero_point = params.get("scale"), params.get("zero_point")
        _require(dtype in ("float16", "float32", "float64"), f"int8 item cannot carry a {dtype} tensor")
        _require(isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
                 and scale > 0, f"int8 scale {scale!r} is not a positive number")
        _require(isinstance(zero_point, int) and not isinstance(zero_point, bool) and -128 <= zero_point <= 127,
                 f"int8 zero point {zero_point!r} is not an integer in -128..127")
        _check_raw("int8", shape, nbytes, self.name)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        shape = tuple(encoded.shape)
        if "scale" not in encoded.params:
            return tensor_from_bytes(encoded.data, encoded.dtype, shape)
        q = tensor_from_bytes(encoded.data, "int8", shape).to(torch.float64)
        scale, zero_point = float(encoded.params["scale"]), int(encoded.params["zero_point"])
        return ((q - zero_point) * scale).to(wire_dtype(encoded.dtype))


# ----------------------------------------------------------------------------------- image codecs

def _is_image_batch(tensor: torch.Tensor) -> bool:
    """uint8 ``[N, 1|3, H, W]``: what the image codecs compress; anything else crosses raw."""
    return tensor.dtype == torch.uint8 and tensor.dim() == 4 and tensor.shape[1] in (1, 3) and tensor.numel() > 0


class _ImageCodec(Codec):
    """Each image of a uint8 batch compressed on its own with Pillow; the payload is the images'
    files back to back, their lengths in ``params["sizes"]``."""

    format = ""

    def _save_options(self) -> dict[str, Any]:
        return {}

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        import io

        from PIL import Image

        if not _is_image_batch(tensor):
            return _raw_fallback(self.name, tensor)
        array = tensor.detach().to("cpu").permute(0, 2, 3, 1).contiguous().numpy()
        files = []
        for image in array:
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format=self.format, **self._save_options())
            files.append(buffer.getvalue())
        return EncodedTensor(self.name, "uint8", tuple(tensor.shape), b"".join(files),
                             {"format": self.format, "sizes": [len(f) for f in files]})

    def check_encoded(self, dtype: str, shape: tuple[int, ...], params: dict[str, Any], nbytes: int) -> None:
        if "sizes" not in params:
            _check_fallback(params, dtype, shape, nbytes, self.name)
            return
        sizes = params["sizes"]
        _require(params.get("format") == self.format, f"{self.name} item names format {params.get('format')!r}")
        _require(dtype == "uint8" and len(shape) == 4 and shape[1] in (1, 3) and shape[0] > 0,
                 f"{self.name} item must carry a uint8 [N, 1|3, H, W] batch, not {dtype} {list(shape)}")
        _require(isinstance(sizes, list) and len(sizes) == shape[0]
                 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
                 and sum(sizes) == nbytes, f"{self.name} item sizes do not add up to its {nbytes} bytes")
        bound = 2 * expected_nbytes(dtype, shape) + 4096 * shape[0]
        _require(nbytes <= bound, f"{self.name} item of {nbytes} bytes is larger than its images could be ({bound})")

    def _check_file(self, data: memoryview) -> None:
        """Format-specific checks of one file before the image library parses it."""

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import io

        from PIL import Image

        shape = tuple(encoded.shape)
        if "sizes" not in encoded.params:
            return tensor_from_bytes(encoded.data, encoded.dtype, shape)
        mode = "L" if shape[1] == 1 else "RGB"
        view, images, offset = memoryview(encoded.data), [], 0
        for size in encoded.params["sizes"]:
            file = view[offset : offset + size]
            offset += size
            self._check_file(file)
            try:  # only the agreed format; its size and mode are checked before any pixel is decoded
                with Image.open(io.BytesIO(file), formats=[self.format]) as image:
                    _require(image.size == (shape[3], shape[2]) and image.mode == mode,
                             f"{self.name} image is {image.mode} {image.size[0]}x{image.size[1]}, "
                             f"expected {mode} {shape[3]}x{shape[2]}")
                    array = np.asarray(image)
            except ValueError:
                raise
            except Exception as exc:  # noqa: BLE001 (PIL raises many kinds on a corrupt or truncated file)
                raise ValueError(f"corrupt {self.name} image in the payload: {exc}") from None
            images.append(array.reshape(shape[2], shape[3], shape[1]))
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND"}


@register_codec
class PngCodec(_ImageCodec):
    """Lossless: uint8 ``[N, 1|3, H, W]`` image batches as one PNG per image (``compress_level``
    0..9); any other tensor crosses raw."""

    name = "png"
    lossless = True
    format = "PNG"

    def __init__(self, compress_level: int = 6) -> None:
        self.compress_level = int(compress_level)

    def _save_options(self) -> dict[str, Any]:
        return {"compress_level": self.compress_level}

    def _check_file(self, data: memoryview) -> None:
        """Only the chunks this encoder writes: ancillary chunks (compressed text above all)
        would be inflated by the image library during parsing, outside any size check."""
        _require(bytes(data[:8]) == b"\x89PNG\r\n\x1a\n", "png image lacks the PNG signature")
        offset, chunks = 8, []
        while offset + 8 <= len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            chunks.append(bytes(data[offset + 4 : offset + 8]))
            offset += 12 + length
        _require(offset == len(data) and chunks[:1] == [b"IHDR"] and chunks[-1:] == [b"IEND"]
                 and set(chunks) <= _PNG_CHUNKS, f"png image has chunks {sorted(set(chunks))}; "
                 f"only {sorted(_PNG_CHUNKS)} are accepted")

    def __repr__(self) -> str:
        return f"PngCodec(compress_level={self.compress_level})"


@register_codec
class JpegCodec(_ImageCodec):
    """Lossy: uint8 ``[N, 1|3, H, W]`` image batches as one JPEG per image at ``quality`` (1..95);
    any other tensor crosses raw."""

    name = "jpeg"
    lossless = False
    format = "JPEG"

    def __init__(self, quality: int = 90) -> None:
        self.quality = int(quality)

    def _save_options(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def __repr__(self) -> str:
        return f"JpegCodec(quality={self.quality})"
