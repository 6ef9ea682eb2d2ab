"""Tensor codecs: how a tensor that crosses the cut becomes bytes on the wire and back.

Every codec turns a tensor into an :class:`EncodedTensor` (JSON-safe metadata plus a raw byte
payload) and back. The bytes a codec produces are exactly what the link carries and what the
bottleneck finder counts, so the two can never disagree.
"""

from __future__ import annotations

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


def tensor_from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`; checks that the byte count matches dtype and shape."""
    torch_dtype = wire_dtype(dtype)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(data) != expected:
        raise ValueError(f"payload has {len(data)} bytes but a {dtype} tensor of shape {tuple(shape)} needs {expected}")
    if expected == 0:
        return torch.empty(tuple(shape), dtype=torch_dtype)
    array = np.frombuffer(bytearray(data), dtype=torch.empty((), dtype=torch_dtype).numpy().dtype.newbyteorder("<"))
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False)).reshape(tuple(shape))


class Codec(ABC):
    """Turns a tensor into bytes and back. Subclasses set ``name`` and ``lossless``."""

    name: str = ""
    lossless: bool = True

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> EncodedTensor: ...

    @abstractmethod
    def decode(self, encoded: EncodedTensor) -> torch.Tensor: ...

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


def decode(encoded: EncodedTensor) -> torch.Tensor:
    """Decode with the codec named in the metadata (receiver side)."""
    try:
        codec_cls = CODECS[encoded.codec]
    except KeyError:
        raise ValueError(f"unknown codec {encoded.codec!r}; known: {sorted(CODECS)}") from None
    return codec_cls().decode(encoded)


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

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import zstandard

        expected = _expected_nbytes(encoded.dtype, encoded.shape)
        try:
            data = zstandard.ZstdDecompressor().decompress(encoded.data, max_output_size=expected) if expected else b""
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

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import lz4.frame

        try:
            data = lz4.frame.decompress(encoded.data)
        except RuntimeError as exc:  # what lz4 raises on a corrupt frame
            raise ValueError(f"corrupt lz4 payload: {exc}") from None
        return tensor_from_bytes(data, encoded.dtype, tuple(encoded.shape))


def _expected_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * torch.empty((), dtype=wire_dtype(dtype)).element_size()


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

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        import io

        from PIL import Image

        shape = tuple(encoded.shape)
        if "sizes" not in encoded.params:
            return tensor_from_bytes(encoded.data, encoded.dtype, shape)
        sizes = [int(s) for s in encoded.params["sizes"]]
        if len(shape) != 4 or len(sizes) != shape[0] or sum(sizes) != len(encoded.data):
            raise ValueError(f"{self.name} payload of {len(encoded.data)} bytes does not hold {shape[0]} images of sizes {sizes}")
        mode = "L" if shape[1] == 1 else "RGB"
        images, offset = [], 0
        for size in sizes:
            try:
                with Image.open(io.BytesIO(encoded.data[offset : offset + size])) as image:
                    array = np.asarray(image.convert(mode))
            except (OSError, SyntaxError) as exc:  # PIL's errors for a corrupt or truncated file
                raise ValueError(f"corrupt {self.name} image in the payload: {exc}") from None
            offset += size
            images.append(array.reshape(shape[2], shape[3], shape[1]))  # ValueError on a wrong size
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


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
