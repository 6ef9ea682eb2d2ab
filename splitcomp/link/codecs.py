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
