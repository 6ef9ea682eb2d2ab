"""Bytes the wire format adds around what requests, answers and probes carry.

A transfer takes as long as its whole frame (prefix, JSON header, payload, MAC), so the latency
model and the simulator charge the frame, not only the payload. The sizes here come from
encoding frames with :mod:`splitcomp.link.wire` itself, with header values as long as real ones
(a scenario time with all its digits, a full server report), so they follow the wire format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from splitcomp.link.auth import FrameAuth
from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.link.wire import Kind, encode_frame
from splitcomp.records import ServerReport

# Header values with as many digits as real ones have (JSON floats print up to 17 digits).
TYPICAL_T = 123.45678901234567
TYPICAL_REQUEST = 12345
TYPICAL_REPORT = ServerReport(batch_size=1, queue_len=0, slowdown=1.0, queue_s=1.2345678901234567e-05,
                              tail_s=0.012345678901234567, server_s=0.012345678901234567,
                              decode_s=1.2345678901234567e-05, handled_s=0.012345678901234567)
_SECRET = b"k" * 32  # any secret: only the MAC's length counts


def request_meta(request: int, cut: int, t: float) -> dict[str, Any]:
    """The header of a request frame (what the device sends with the head's output)."""
    return {"request": request, "cut": cut, "t": t}


def answer_meta(report: ServerReport, request: Any) -> dict[str, Any]:
    """The header of an answer frame: the server's report and the request it answers."""
    return {**report.to_meta(), "request": request}


def probe_meta(t: float) -> dict[str, Any]:
    return {"t": t}


def probe_ack_meta(report: ServerReport, nbytes: int) -> dict[str, Any]:
    return {**report.to_meta(), "bytes": nbytes}


def _frame_len(kind: Kind, meta: dict[str, Any], values: tuple | list, codec: Codec | None, secret: bool) -> int:
    return len(encode_frame(kind, meta, values, codec, auth=FrameAuth.device(_SECRET) if secret else None))


def request_overhead(values: tuple[Any, ...], codec: Codec, payload_bytes: int, secret: bool = False) -> int:
    """Bytes a request frame carrying ``values`` (a head's output) adds to ``payload_bytes``."""
    meta = request_meta(TYPICAL_REQUEST, 10, TYPICAL_T)
    return _frame_len(Kind.REQUEST, meta, values, codec, secret) - payload_bytes


@dataclass(frozen=True)
class FrameBytes:
    """Frame bytes on the wire: ``request`` is added to a cut's payload (``per_cut`` holds the
    exact figure of cuts measured with their real tensors), ``answer`` to the logits, ``probe`` to
    a probe's filler; ``probe_ack`` is a whole probe answer."""

    request: int
    answer: int
    probe: int
    probe_ack: int
    per_cut: Mapping[str, int] = field(default_factory=dict)

    def request_bytes(self, cut_name: str, payload_bytes: int) -> int:
        return payload_bytes + self.per_cut.get(cut_name, self.request)

    def answer_bytes(self, logits_bytes: int) -> int:
        return logits_bytes + self.answer

    def probe_bytes(self, filler_bytes: int) -> int:
        return filler_bytes + self.probe

    def with_cuts(self, per_cut: Mapping[str, int]) -> FrameBytes:
        return FrameBytes(self.request, self.answer, self.probe, self.probe_ack, dict(per_cut))


@lru_cache(maxsize=4)
def wire_frame_bytes(secret: bool = False) -> FrameBytes:
    """The frame overheads of the wire format for a request carrying one uint8 image tensor, a
    float32 answer and a probe (``secret``: frames carry a MAC)."""
    image = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    logits = torch.zeros(1, 1000)
    request = request_overhead((image,), RawCodec(), image.numel(), secret)
    answer = _frame_len(Kind.RESPONSE, answer_meta(TYPICAL_REPORT, TYPICAL_REQUEST), [logits], RawCodec(),
                        secret) - 4 * logits.numel()
    filler = torch.zeros(16384, dtype=torch.uint8)
    probe = _frame_len(Kind.PROBE, probe_meta(TYPICAL_T), [filler], None, secret) - filler.numel()
    ack = _frame_len(Kind.PROBE_ACK, probe_ack_meta(TYPICAL_REPORT, 16384 + probe), [], None, secret)
    return FrameBytes(request=request, answer=answer, probe=probe, probe_ack=ack)
