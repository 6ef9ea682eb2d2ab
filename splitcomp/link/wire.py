"""The wire format between device and edge server: versioned, length-prefixed binary frames.

A frame is a fixed 20-byte prefix, a JSON header and a raw payload::

    magic "SPLC" | version u8 | kind u8 | flags u16 | header_len u32 | payload_len u64
    header (UTF-8 JSON object)  |  payload (tensor bytes, back to back)  |  [32-byte HMAC-SHA256]

The prefix is validated (magic, version, kind, both lengths against hard limits) before any byte
of header or payload is read, and the header (dtypes, shapes, codecs, byte counts) before the
payload is read. Nothing is ever unpickled: tensors are raw bytes described by JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from splitcomp.errors import PeerError
from splitcomp.link.codecs import CODECS, WIRE_DTYPES, Codec, EncodedTensor, RawCodec, decode

MAGIC = b"SPLC"
VERSION = 1
PREFIX = struct.Struct("!4sBBHIQ")
FLAG_HMAC = 0x1
HMAC_BYTES = 32
_JSON_SAFE = (int, float, str, bool, type(None))


class Kind(IntEnum):
    HELLO = 1
    WELCOME = 2
    REQUEST = 3
    RESPONSE = 4
    ERROR = 5
    PROBE = 6
    PROBE_ACK = 7


class FrameError(PeerError):
    """A frame that breaks the protocol (bad magic, version, size, header or payload)."""


@dataclass(frozen=True)
class Limits:
    """Hard limits checked before anything is read; a peer cannot make us allocate more."""

    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 256 * 1024 * 1024
    max_items: int = 64
    max_dims: int = 8


@dataclass
class Frame:
    kind: Kind
    meta: dict[str, Any]
    items: list[EncodedTensor | Any] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        return sum(item.nbytes for item in self.items if isinstance(item, EncodedTensor))

    def values(self) -> tuple[Any, ...]:
        """The carried values with tensors decoded (by the codec each one names)."""
        return tuple(decode(item) if isinstance(item, EncodedTensor) else item for item in self.items)


# --- encoding -------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A plain JSON-safe value (ints from ``x.size(0)``, tuples of ints, ...); refuse anything else."""
    if isinstance(value, _JSON_SAFE):
        return value
    if isinstance(value, (tuple, list, torch.Size)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot send a value of type {type(value).__name__} over the wire")


def encode_frame(kind: Kind, meta: dict[str, Any] | None = None, values: tuple | list = (),
                 codec: Codec | None = None, secret: bytes | None = None) -> bytes:
    """One frame as bytes. Tensors in ``values`` are encoded with ``codec`` (raw by default);
    other values must be plain JSON values. ``secret`` appends an HMAC-SHA256 over the frame."""
    codec = codec or RawCodec()
    items_meta: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for value in values:
        if isinstance(value, EncodedTensor):
            encoded = value
        elif isinstance(value, torch.Tensor):
            encoded = codec.encode(value)
        else:
            items_meta.append({"value": _plain(value)})
            continue
        items_meta.append({"codec": encoded.codec, "dtype": encoded.dtype, "shape": list(encoded.shape),
                           "params": encoded.params, "nbytes": encoded.nbytes})
        payloads.append(encoded.data)
    header = json.dumps({"meta": meta or {}, "items": items_meta}, separators=(",", ":")).encode()
    payload_len = sum(len(p) for p in payloads)
    flags = FLAG_HMAC if secret else 0
    body = b"".join([PREFIX.pack(MAGIC, VERSION, int(kind), flags, len(header), payload_len), header, *payloads])
    if secret:
        body += hmac.new(secret, body, hashlib.sha256).digest()
    return body


# --- decoding -------------------------------------------------------------------------------
def recv_exact(sock: socket.socket, nbytes: int) -> bytearray:
    """Read exactly ``nbytes`` or raise PeerError when the peer closes early."""
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    got = 0
    while got < nbytes:
        try:
            n = sock.recv_into(view[got:], min(nbytes - got, 1 << 20))
        except TimeoutError:
            raise PeerError(f"the peer sent nothing for {sock.gettimeout()} s ({got} of {nbytes} bytes read)") from None
        if n == 0:
            raise PeerError(f"the peer closed the connection after {got} of {nbytes} bytes")
        got += n
    return buffer


def parse_prefix(prefix: bytes, limits: Limits) -> tuple[Kind, int, int, int]:
    """Validate the fixed prefix; returns (kind, flags, header_len, payload_len)."""
    magic, version, kind, flags, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("not a splitcomp frame (bad magic); is the peer a splitcomp server?")
    if version != VERSION:
        raise FrameError(f"protocol version {version} is not supported (this side speaks {VERSION}); "
                         "run the same splitcomp version on both sides")
    try:
        kind = Kind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    if flags & ~FLAG_HMAC:
        raise FrameError(f"unknown frame flags {flags:#x}")
    if header_len > limits.max_header_bytes:
        raise FrameError(f"frame header of {header_len} bytes exceeds the limit of {limits.max_header_bytes}")
    if payload_len > limits.max_payload_bytes:
        raise FrameError(f"frame payload of {payload_len} bytes exceeds the limit of {limits.max_payload_bytes}")
    return kind, flags, header_len, payload_len


def parse_header(raw: bytes, payload_len: int, limits: Limits) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate the JSON header against the payload length; returns (meta, item descriptions)."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FrameError("frame header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) \
            or not isinstance(header.get("items"), list):
        raise FrameError("frame header must be an object with 'meta' (object) and 'items' (list)")
    items = header["items"]
    if len(items) > limits.max_items:
        raise FrameError(f"frame carries {len(items)} items, more than the limit of {limits.max_items}")
    total = 0
    for item in items:
        total += _check_item(item, limits)
    if total != payload_len:
        raise FrameError(f"header describes {total} payload bytes but the frame carries {payload_len}")
    return header["meta"], items


def _check_item(item: Any, limits: Limits) -> int:
    """Validate one item description; returns its payload byte count."""
    if not isinstance(item, dict):
        raise FrameError("each frame item must be an object")
    if "value" in item:
        return 0
    shape, dtype, nbytes = item.get("shape"), item.get("dtype"), item.get("nbytes")
    if item.get("codec") not in CODECS:
        raise FrameError(f"unknown codec {item.get('codec')!r}; known: {sorted(CODECS)}")
    if dtype not in WIRE_DTYPES:
        raise FrameError(f"unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > limits.max_dims \
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise FrameError(f"bad tensor shape {shape!r}")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise FrameError(f"bad tensor byte count {nbytes!r}")
    if not isinstance(item.get("params", {}), dict):
        raise FrameError("tensor params must be an object")
    if int(np.prod(shape, dtype=np.float64)) > limits.max_payload_bytes:
        raise FrameError(f"tensor shape {shape} is larger than the payload limit allows")
    return nbytes


def read_frame(sock: socket.socket, limits: Limits = Limits(), secret: bytes | None = None) -> Frame:
    """Read and validate one frame from ``sock`` (whose timeout bounds every read)."""
    prefix = recv_exact(sock, PREFIX.size)
    kind, flags, header_len, payload_len = parse_prefix(prefix, limits)
    if secret and not flags & FLAG_HMAC:
        raise FrameError("the peer did not authenticate its frame; set the same auth secret on both sides")
    raw_header = recv_exact(sock, header_len)
    meta, items = parse_header(raw_header, payload_len, limits)
    payload = recv_exact(sock, payload_len)
    if flags & FLAG_HMAC:
        tag = recv_exact(sock, HMAC_BYTES)
        if secret is None:
            raise FrameError("the peer sends authenticated frames; set the same auth secret on this side")
        expected = hmac.new(secret, bytes(prefix) + bytes(raw_header) + bytes(payload), hashlib.sha256).digest()
        if not hmac.compare_digest(bytes(tag), expected):
            raise FrameError("frame authentication failed: the peer does not hold the same auth secret")
    return Frame(kind, meta, _split_payload(items, payload))


def _split_payload(items: list[dict[str, Any]], payload: bytearray) -> list[EncodedTensor | Any]:
    out: list[EncodedTensor | Any] = []
    view = memoryview(payload)  # slices share the received buffer: no copy per tensor
    offset = 0
    for item in items:
        if "value" in item:
            out.append(item["value"])
            continue
        data = view[offset : offset + item["nbytes"]]
        offset += item["nbytes"]
        out.append(EncodedTensor(item["codec"], item["dtype"], tuple(item["shape"]), data, item.get("params", {})))
    return out


def send_frame(sock: socket.socket, frame_bytes: bytes) -> None:
    sock.sendall(frame_bytes)
