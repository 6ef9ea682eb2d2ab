"""The messages of the handshake and of a request, as typed values checked on arrival.

Device -> server HELLO: the model fingerprint, the device's clock origin, a fresh nonce.
Server -> device WELCOME: the number of cuts, the server's torch device, a fresh nonce of its own
and the device's nonce echoed (a recorded WELCOME does not answer a new HELLO).
With a shared secret both are MAC'd with it; every later frame with the session key made from
both nonces (see :mod:`splitcomp.link.auth`). Every field a peer sends is checked here before
anything uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from splitcomp.errors import PeerError
from splitcomp.link.auth import NONCE_BYTES
from splitcomp.link.wire import FrameError

_MAX_FINGERPRINT_KEYS = 16
_MAX_TEXT = 256
_MAX_REQUEST_ID = 2**53


class ModelMismatch(PeerError):
    """Device and server hold different models (or input shape, or codec)."""

    code = "model"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonce(value: Any, who: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        raise FrameError(f"the {who} nonce must be {2 * NONCE_BYTES} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise FrameError(f"the {who} nonce must be {2 * NONCE_BYTES} hex digits") from None


@dataclass(frozen=True)
class Hello:
    fingerprint: dict[str, str]
    clock_origin: float
    nonce: bytes
    shaped: bool = True  # False for background clients: they load the server, not the device's link

    def meta(self) -> dict[str, Any]:
        meta = {"fingerprint": self.fingerprint, "clock_origin": self.clock_origin, "nonce": self.nonce.hex()}
        return meta if self.shaped else {**meta, "link": "unshaped"}

    @staticmethod
    def parse(meta: dict[str, Any]) -> Hello:
        fingerprint = meta.get("fingerprint")
        if not isinstance(fingerprint, dict) or len(fingerprint) > _MAX_FINGERPRINT_KEYS or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= _MAX_TEXT and len(v) <= _MAX_TEXT
                for k, v in fingerprint.items()):
            raise FrameError("HELLO must carry the model fingerprint as an object of short strings")
        origin = meta.get("clock_origin")
        if not _is_number(origin):
            raise FrameError("HELLO must carry the device's clock origin as a number")
        link = meta.get("link", "shaped")
        if link not in ("shaped", "unshaped"):
            raise FrameError("HELLO's link must be 'shaped' or 'unshaped'")
        return Hello(fingerprint, float(origin), _nonce(meta.get("nonce"), "device"), shaped=link == "shaped")


@dataclass(frozen=True)
class Welcome:
    cuts: int
    device: str
    nonce: bytes
    device_nonce: bytes

    def meta(self) -> dict[str, Any]:
        return {"cuts": self.cuts, "device": self.device, "nonce": self.nonce.hex(),
                "device_nonce": self.device_nonce.hex()}

    @staticmethod
    def parse(meta: dict[str, Any]) -> Welcome:
        cuts, device = meta.get("cuts"), meta.get("device")
        if not _is_int(cuts) or cuts < 1 or not isinstance(device, str) or len(device) > _MAX_TEXT:
            raise FrameError("WELCOME must name the number of cuts and the server's device")
        return Welcome(cuts, device, _nonce(meta.get("nonce"), "server"),
                       _nonce(meta.get("device_nonce"), "echoed device"))


@dataclass(frozen=True)
class RequestMeta:
    request: int
    cut: int
    t: float

    @staticmethod
    def parse(meta: dict[str, Any]) -> RequestMeta:
        request, cut, t = meta.get("request"), meta.get("cut"), meta.get("t", 0.0)
        if not _is_int(request) or abs(request) > _MAX_REQUEST_ID:
            raise FrameError(f"a REQUEST must carry an integer request id, not {_short(request)}")
        if not _is_int(cut):
            raise FrameError(f"a REQUEST must name its cut by index, not {_short(cut)}")
        if not _is_number(t):
            raise FrameError(f"a REQUEST's scenario time must be a number, not {_short(t)}")
        return RequestMeta(request, cut, float(t))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
