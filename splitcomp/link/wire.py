"""The wire format between device and edge server: versioned, length-prefixed binary frames.

A frame is a fixed 20-byte prefix, a JSON header and a raw payload::

    magic "SPLC" | version u8 | kind u8 | flags u16 | header_len u32 | payload_len u64
    header (UTF-8 JSON object) | [header MAC, 32 bytes] | payload (tensor bytes) | [frame MAC, 32 bytes]

With the MAC flag, both MACs are HMAC-SHA256 under the session key with the direction and the
frame's sequence number mixed in (see :mod:`splitcomp.link.auth`): the header MAC covers prefix
and header, the frame MAC everything but the two MACs.

A receiver never trusts a declared length. In order, before anything is allocated: the prefix
(magic, version, kind, flags, both lengths against hard limits; HELLO, WELCOME, ERROR and
PROBE_ACK carry no payload and a small header), the header MAC, the header (strict JSON: no NaN,
no long integers, bounded nesting; every tensor item's codec, dtype, shape and byte count, each
checked against what its codec can produce and its decoded size limited in bytes), the
receiver's own check (for example against the cut's signature and the agreed codec), then a
share of the server-wide byte budget. Only then is the payload buffer allocated, once, and
filled as bytes arrive while the frame MAC is computed over it incrementally. Every read has a
deadline. Nothing is ever unpickled: tensors are raw bytes described by JSON.
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from splitcomp.errors import PeerError
from splitcomp.link.auth import MAC_BYTES, FrameAuth
from splitcomp.link.budget import ByteBudget
from splitcomp.link.buffers import Buffer, PayloadPool, new_buffer
from splitcomp.link.codecs import (
    WIRE_DTYPES,
    Codec,
    EncodedTensor,
    RawCodec,
    codec_named,
    decode,
    expected_nbytes,
)

MAGIC = b"SPLC"
VERSION = 2
PREFIX = struct.Struct("!4sBBHIQ")
FLAG_MAC = 0x1
_JSON_SCALARS = (int, float, str, bool, type(None))


class Kind(IntEnum):
    HELLO = 1
    WELCOME = 2
    REQUEST = 3
    RESPONSE = 4
    ERROR = 5
    PROBE = 6
    PROBE_ACK = 7


# Kinds that carry no payload and only a small header: a peer cannot make us hold more for them.
SMALL_KINDS = frozenset({Kind.HELLO, Kind.WELCOME, Kind.ERROR, Kind.PROBE_ACK})


class FrameError(PeerError):
    """A frame that breaks the protocol (bad magic, size, header or payload, a missed deadline).
    ``code`` names the kind of problem in the ERROR frame that answers it."""

    code = "protocol"


class VersionError(FrameError):
    """The peer speaks another protocol version."""

    code = "version"


class AuthError(FrameError):
    """A frame without the MAC this side requires, with a wrong one, or with one it cannot check."""

    code = "auth"


class BusyError(FrameError):
    """The receiver cannot hold the frame now (its byte budget is spent); retrying later may work."""

    code = "busy"


class ConnectionClosed(PeerError):
    """The peer closed the connection between two frames (a clean end)."""


class IdleTimeout(PeerError):
    """No frame began within the idle timeout."""


@dataclass(frozen=True)
class Limits:
    """Hard limits checked before anything is read; a peer cannot make us allocate more."""

    max_header_bytes: int = 64 * 1024
    max_small_header_bytes: int = 4096          # HELLO, WELCOME, ERROR, PROBE_ACK
    max_payload_bytes: int = 256 * 1024 * 1024
    max_decoded_bytes: int = 256 * 1024 * 1024  # all tensors of one frame once decoded
    max_items: int = 64
    max_dims: int = 8
    max_json_depth: int = 6
    max_int_digits: int = 20


@dataclass(frozen=True)
class Timeouts:
    """How long a reader waits: for a frame to begin (``idle_s``), for the whole frame once it
    began (``frame_s``, plus its payload at ``min_rate_bps`` when that is set). None: no limit."""

    idle_s: float | None = 30.0
    frame_s: float | None = 30.0
    min_rate_bps: float = 0.0


@dataclass(frozen=True)
class ItemSpec:
    """One tensor item as its header declares it (checked, not yet read)."""

    codec: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    params: dict[str, Any]

    @property
    def decoded_nbytes(self) -> int:
        return expected_nbytes(self.dtype, self.shape)


@dataclass
class Frame:
    kind: Kind
    meta: dict[str, Any]
    items: list[EncodedTensor | Any] = field(default_factory=list)
    _release: Callable[[], None] | None = field(default=None, repr=False)
    wire_bytes: int = 0   # what the frame took on the wire: prefix, header, payload and MACs

    @property
    def payload_bytes(self) -> int:
        return sum(item.nbytes for item in self.items if isinstance(item, EncodedTensor))

    def values(self) -> tuple[Any, ...]:
        """The carried values with tensors decoded (by the codec each one names)."""
        return tuple(decode(item) if isinstance(item, EncodedTensor) else item for item in self.items)

    def release(self) -> None:
        """Return the frame's share of the receiver's byte budget (once it has been answered)."""
        if self._release is not None:
            self._release, release = None, self._release
            release()


# --- encoding -------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A plain JSON-safe value (ints from ``x.size(0)``, tuples of ints, ...); refuse anything else."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (tuple, list, torch.Size)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot send a value of type {type(value).__name__} over the wire")


def encode_frame(kind: Kind, meta: dict[str, Any] | None = None, values: tuple | list = (),
                 codec: Codec | None = None, auth: FrameAuth | None = None) -> bytes:
    """One frame as bytes. Tensors in ``values`` are encoded with ``codec`` (raw by default);
    other values must be plain JSON values. With ``auth`` the frame carries both MACs for the
    next sequence number; call ``auth.sent()`` once it has been sent."""
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
    header = json.dumps({"meta": meta or {}, "items": items_meta}, separators=(",", ":"), allow_nan=False).encode()
    payload_len = sum(len(p) for p in payloads)
    prefix = PREFIX.pack(MAGIC, VERSION, int(kind), FLAG_MAC if auth else 0, len(header), payload_len)
    if auth is None:
        return b"".join([prefix, header, *payloads])
    header_tag, frame_tag = _tags(auth.send_mac(), prefix, header, payloads)
    return b"".join([prefix, header, header_tag, *payloads, frame_tag])


def _tags(mac: hmac.HMAC, prefix: bytes, header: bytes, payloads: list) -> tuple[bytes, bytes]:
    mac.update(prefix)
    mac.update(header)
    header_tag = mac.copy().digest()
    for payload in payloads:
        mac.update(payload)
    return header_tag, mac.digest()


def _sections(frame: bytes) -> tuple[memoryview, memoryview, memoryview, memoryview]:
    """(prefix, header, header tag, payload) of an authenticated frame this side encoded."""
    view = memoryview(frame)
    _, _, _, _, header_len, payload_len = PREFIX.unpack(view[: PREFIX.size])
    header_end = PREFIX.size + header_len
    payload_start = header_end + MAC_BYTES
    return (view[: PREFIX.size], view[PREFIX.size : header_end], view[header_end:payload_start],
            view[payload_start : payload_start + payload_len])


def needs_resign(frame: bytes, auth: FrameAuth) -> bool:
    """Whether ``frame`` carries MACs other than those ``auth`` would give its next frame (after
    a reconnection, or when another frame was sent since). Cheap: only the header is MAC'd."""
    if not PREFIX.unpack_from(frame)[3] & FLAG_MAC:
        return False
    prefix, header, header_tag, _ = _sections(frame)
    mac = auth.send_mac()
    mac.update(prefix)
    mac.update(header)
    return not hmac.compare_digest(mac.digest(), header_tag)


def resign(frame: bytes, auth: FrameAuth) -> bytes:
    """``frame`` with its MACs redone for ``auth``'s next frame (after a reconnection)."""
    prefix, header, _, payload = _sections(frame)
    header_tag, frame_tag = _tags(auth.send_mac(), prefix, header, [payload])
    return b"".join([prefix, header, header_tag, payload, frame_tag])


# --- validating prefix and header -----------------------------------------------------------
def parse_prefix(prefix: bytes, limits: Limits) -> tuple[Kind, int, int, int]:
    """Validate the fixed prefix; returns (kind, flags, header_len, payload_len)."""
    magic, version, kind, flags, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("not a splitcomp frame (bad magic); is the peer a splitcomp server?")
    if version != VERSION:
        raise VersionError(f"the peer speaks splitcomp protocol version {version} and this side version "
                           f"{VERSION}; run the same splitcomp version on device and server")
    try:
        kind = Kind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    if flags & ~FLAG_MAC:
        raise FrameError(f"unknown frame flags {flags:#x}")
    header_limit = limits.max_small_header_bytes if kind in SMALL_KINDS else limits.max_header_bytes
    if header_len > header_limit:
        raise FrameError(f"{kind.name} header of {header_len} bytes exceeds the limit of {header_limit}")
    if kind in SMALL_KINDS and payload_len:
        raise FrameError(f"a {kind.name} frame carries no payload (this one declares {payload_len} bytes)")
    if payload_len > limits.max_payload_bytes:
        raise FrameError(f"frame payload of {payload_len} bytes exceeds the limit of {limits.max_payload_bytes}")
    return kind, flags, header_len, payload_len


def parse_header(raw: bytes | bytearray, payload_len: int, limits: Limits) -> tuple[dict[str, Any], list[Any]]:
    """Validate the JSON header against the payload length; returns (meta, items), each item an
    :class:`ItemSpec` (a tensor) or a plain value."""
    header = _strict_json(raw, limits)
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) \
            or not isinstance(header.get("items"), list):
        raise FrameError("frame header must be an object with 'meta' (object) and 'items' (list)")
    raw_items = header["items"]
    if len(raw_items) > limits.max_items:
        raise FrameError(f"frame carries {len(raw_items)} items, more than the limit of {limits.max_items}")
    items = [_parse_item(item, limits) for item in raw_items]
    specs = [item for item in items if isinstance(item, ItemSpec)]
    total = sum(spec.nbytes for spec in specs)
    if total != payload_len:
        raise FrameError(f"header describes {total} payload bytes but the frame carries {payload_len}")
    decoded = sum(spec.decoded_nbytes for spec in specs)
    if decoded > limits.max_decoded_bytes:
        raise FrameError(f"the frame's tensors would take {decoded} bytes decoded, more than the limit "
                         f"of {limits.max_decoded_bytes}")
    return header["meta"], items


def _strict_json(raw: bytes | bytearray, limits: Limits) -> Any:
    def refuse_constant(name: str) -> Any:
        raise FrameError(f"frame header holds {name}, which is not a JSON number")

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > limits.max_int_digits:
            raise FrameError(f"frame header holds an integer of {len(text)} digits")
        return int(text)

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise FrameError(f"frame header holds the non-finite number {text[:20]}")
        return value

    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=refuse_constant, parse_int=bounded_int,
                            parse_float=finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FrameError("frame header is not valid UTF-8 JSON") from None
    if _depth(header) > limits.max_json_depth:
        raise FrameError(f"frame header is nested deeper than {limits.max_json_depth} levels")
    return header


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iteratively: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_item(item: Any, limits: Limits) -> ItemSpec | Any:
    if not isinstance(item, dict):
        raise FrameError("each frame item must be an object")
    if "value" in item:
        value = item["value"]
        if set(item) != {"value"} or not _is_plain(value):
            raise FrameError("a value item holds one plain value (a number, string, null or a list of them)")
        return value
    codec, dtype, shape, nbytes = item.get("codec"), item.get("dtype"), item.get("shape"), item.get("nbytes")
    params = item.get("params", {})
    if not isinstance(codec, str) or not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise FrameError(f"item codec {codec!r} or dtype {dtype!r} is not a known name")
    if not isinstance(shape, list) or len(shape) > limits.max_dims \
            or not all(_is_int(d) and 0 <= d < 2**31 for d in shape):
        raise FrameError(f"bad tensor shape {shape!r}")
    if not _is_int(nbytes) or nbytes < 0:
        raise FrameError(f"bad tensor byte count {nbytes!r}")
    if not isinstance(params, dict):
        raise FrameError("tensor params must be an object")
    spec = ItemSpec(codec, dtype, tuple(shape), nbytes, params)
    if spec.decoded_nbytes > limits.max_decoded_bytes:
        raise FrameError(f"a {dtype} tensor of shape {shape} takes {spec.decoded_nbytes} bytes, more than "
                         f"the limit of {limits.max_decoded_bytes}")
    try:
        codec_named(codec).check_encoded(dtype, spec.shape, params, nbytes)
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    return spec


def _is_plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, _JSON_SCALARS) for v in value)
    return isinstance(value, _JSON_SCALARS)


def budget_share(items: list[Any], payload_len: int) -> int:
    """Bytes a frame holds at its peak: the payload, and for each item that is not raw its
    decoded tensor twice (the decompressed bytes and the tensor made of them). Raw tensors are
    views of the payload."""
    return payload_len + sum(2 * item.decoded_nbytes for item in items
                             if isinstance(item, ItemSpec) and item.codec != RawCodec.name)


# --- reading --------------------------------------------------------------------------------
HeaderCheck = Callable[[Kind, dict[str, Any], list[Any]], None]


class FrameReader:
    """Reads validated frames from one connection.

    ``auth`` (the connection's MAC state) makes every frame need valid MACs; ``budget`` is the
    receiver-wide byte budget a frame's payload is reserved from (released by ``Frame.release``);
    ``pool``, when given, lends the payload buffers and takes them back at ``Frame.release``
    (the owner then must not use the frame's values after releasing it)."""

    def __init__(self, sock: socket.socket, limits: Limits | None = None, auth: FrameAuth | None = None,
                 budget: ByteBudget | None = None, pool: PayloadPool | None = None) -> None:
        self.sock = sock
        self.limits = limits or Limits()
        self.auth = auth
        self.budget = budget
        self.pool = pool

    def read(self, allowed: Collection[Kind] | None = None, check: HeaderCheck | None = None,
             timeouts: Timeouts = Timeouts(), deadline: float | None = None,
             unauthenticated: Collection[Kind] = ()) -> Frame:
        """The next frame. ``allowed``: the kinds acceptable now; ``check(kind, meta, items)``
        raises for a header this side will not take (before the payload exists); ``deadline``
        (``time.monotonic()``) bounds the whole read; ``unauthenticated``: kinds accepted without a
        MAC even when this side has a secret (a refusal before the session exists)."""
        prefix = bytearray(PREFIX.size)
        view = memoryview(prefix)
        got = self._first_bytes(view, timeouts.idle_s, deadline)
        started = time.monotonic()
        frame_deadline = _earliest(deadline, started + timeouts.frame_s if timeouts.frame_s else None)
        self._fill(view[got:], frame_deadline, None)
        kind, flags, header_len, payload_len = parse_prefix(prefix, self.limits)
        if allowed is not None and kind not in allowed:
            raise FrameError(f"unexpected {kind.name} frame here (expected {'/'.join(k.name for k in allowed)})")
        mac = self._mac_for(kind, flags, unauthenticated)
        if timeouts.min_rate_bps and frame_deadline is not None:
            frame_deadline = _earliest(deadline, frame_deadline + 8 * payload_len / timeouts.min_rate_bps)
        if mac is not None:
            mac.update(prefix)
        header = bytearray(header_len)
        self._fill(memoryview(header), frame_deadline, mac)
        if mac is not None:
            self._check_tag(mac.copy(), frame_deadline)
        meta, items = parse_header(header, payload_len, self.limits)
        if check is not None:
            check(kind, meta, items)
        release = self._reserve(budget_share(items, payload_len), frame_deadline)
        buffer = self.pool.take(payload_len) if self.pool is not None else new_buffer(payload_len)
        payload = memoryview(buffer)[:payload_len]  # a recycled buffer may be longer
        try:
            self._fill(payload, frame_deadline, mac)
            if mac is not None:
                self._check_tag(mac, frame_deadline)
        except BaseException:
            if release is not None:
                release()
            raise
        if mac is not None:
            self.auth.received()
        if self.pool is not None:
            release = self._recycling(buffer, release)
        wire_bytes = PREFIX.size + header_len + payload_len + (2 * MAC_BYTES if flags & FLAG_MAC else 0)
        return Frame(kind, meta, _split_payload(items, payload), release, wire_bytes)

    def _recycling(self, buffer: Buffer, release: Callable[[], None] | None) -> Callable[[], None]:
        """``release`` that also gives the payload buffer back to the pool."""
        def release_and_recycle() -> None:
            if release is not None:
                release()
            self.pool.give(buffer)
        return release_and_recycle

    # --- steps ------------------------------------------------------------------------------
    def _first_bytes(self, view: memoryview, idle_s: float | None, deadline: float | None) -> int:
        """Wait for a frame to begin; returns how many prefix bytes arrived."""
        idle_limit = time.monotonic() + idle_s if idle_s is not None else None
        limit = _earliest(deadline, idle_limit)
        try:
            self.sock.settimeout(None if limit is None else max(limit - time.monotonic(), 1e-3))
            n = self.sock.recv_into(view)
        except TimeoutError:
            if limit == idle_limit:
                raise IdleTimeout(f"no frame began within {idle_s:g} s") from None
            raise FrameError("the peer sent nothing before the deadline") from None
        if n == 0:
            raise ConnectionClosed("the peer closed the connection")
        return n

    def _fill(self, view: memoryview, deadline: float | None, mac: hmac.HMAC | None) -> None:
        """Fill ``view`` from the socket by ``deadline``, feeding what arrives to ``mac``."""
        got, total = 0, len(view)
        while got < total:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise FrameError(f"the frame did not arrive in time ({got} of {total} bytes of a section read)")
            try:
                self.sock.settimeout(remaining)
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise FrameError(f"the frame did not arrive in time ({got} of {total} bytes of a section "
                                 "read)") from None
            if n == 0:
                raise FrameError(f"the peer closed the connection in the middle of a frame ({got} of {total} "
                                 "bytes of a section read)")
            if mac is not None:
                mac.update(view[got : got + n])
            got += n

    def _mac_for(self, kind: Kind, flags: int, unauthenticated: Collection[Kind]) -> hmac.HMAC | None:
        if self.auth is None:
            if flags & FLAG_MAC:
                raise AuthError("the peer authenticates its frames but this side has no auth secret; give "
                                "device and server the same secret (server.auth_secret_file)")
            return None
        if not flags & FLAG_MAC:
            if kind in unauthenticated:
                return None
            raise AuthError("this side requires authenticated frames and the peer sent none; give device and "
                            "server the same secret (server.auth_secret_file)")
        return self.auth.recv_mac()

    def _check_tag(self, mac: hmac.HMAC, deadline: float | None) -> None:
        tag = bytearray(MAC_BYTES)
        self._fill(memoryview(tag), deadline, None)
        if not hmac.compare_digest(mac.digest(), bytes(tag)):
            raise AuthError("frame authentication failed: the peer holds another secret, or the frame was "
                            "forged, replayed or reordered")

    def _reserve(self, nbytes: int, deadline: float | None) -> Callable[[], None] | None:
        if self.budget is None or nbytes == 0:
            return None
        if nbytes > self.budget.total_bytes:
            raise FrameError(f"a frame holding {nbytes} bytes exceeds this server's in-flight budget of "
                             f"{self.budget.total_bytes}")
        wait = 2.0 if deadline is None else min(2.0, max(0.0, deadline - time.monotonic()))
        if not self.budget.acquire(nbytes, wait):
            raise BusyError("the server is holding as many frames as it can; retry later")
        return lambda: self.budget.release(nbytes)


def read_frame(sock: socket.socket, limits: Limits | None = None, auth: FrameAuth | None = None,
               timeouts: Timeouts = Timeouts()) -> Frame:
    """Read and validate one frame from ``sock`` (see :class:`FrameReader`)."""
    return FrameReader(sock, limits, auth).read(timeouts=timeouts)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _split_payload(items: list[Any], view: memoryview) -> list[EncodedTensor | Any]:
    out: list[EncodedTensor | Any] = []  # slices share the received buffer: no copy per tensor
    offset = 0
    for item in items:
        if not isinstance(item, ItemSpec):
            out.append(item)
            continue
        out.append(EncodedTensor(item.codec, item.dtype, item.shape, view[offset : offset + item.nbytes],
                                 item.params))
        offset += item.nbytes
    return out
