"""The server's tails, one per cut, built on first use, with what each expects to receive."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitcomp.errors import PeerError
from splitcomp.link.codecs import dtype_name
from splitcomp.link.wire import ItemSpec


class RequestMismatch(PeerError):
    """A request whose items do not fit the cut it names (or use a codec not agreed on)."""

    code = "request"


@dataclass(frozen=True)
class Signature:
    """What crosses a cut, per value: ("tensor", dtype, shape without batch) or ("value",)."""

    items: tuple[tuple, ...]

    @staticmethod
    def of(values: tuple[Any, ...]) -> Signature:
        return Signature(tuple(("tensor", v.dtype, tuple(v.shape[1:])) if isinstance(v, torch.Tensor)
                               else ("value",) for v in values))

    def check(self, values: tuple[Any, ...], max_batch: int) -> int:
        """Validate received values; returns their batch size."""
        return self._check([(dtype_name(v.dtype), tuple(v.shape)) if isinstance(v, torch.Tensor) else None
                            for v in values], max_batch)

    def check_items(self, items: list[Any], codecs: frozenset[str], max_batch: int) -> int:
        """Validate a request's declared items (from its header, before its payload is read)
        against this cut and the agreed ``codecs``; returns their batch size."""
        for item in items:
            if isinstance(item, ItemSpec) and item.codec not in codecs:
                raise RequestMismatch(f"codec {item.codec!r} was not agreed on; this server takes "
                                      f"{', '.join(sorted(codecs))}")
        return self._check([(item.dtype, item.shape) if isinstance(item, ItemSpec) else None for item in items],
                           max_batch)

    def _check(self, received: list[tuple[str, tuple[int, ...]] | None], max_batch: int) -> int:
        """``received``: per value, (dtype name, shape) of a tensor or None for a plain value."""
        if len(received) != len(self.items):
            raise RequestMismatch(f"expected {len(self.items)} values for this cut, got {len(received)}")
        batch = None
        for value, expected in zip(received, self.items):
            if expected[0] == "value":
                if value is not None:
                    raise RequestMismatch("expected a plain value, got a tensor")
                continue
            if value is None or len(value[1]) == 0:
                raise RequestMismatch("expected a batched tensor")
            dtype, shape = value
            if dtype != dtype_name(expected[1]) or tuple(shape[1:]) != expected[2]:
                raise RequestMismatch(f"tensor {dtype} {list(shape)} does not fit this cut, which carries "
                                      f"{dtype_name(expected[1])} [N, {', '.join(map(str, expected[2]))}]")
            if batch is not None and shape[0] != batch:
                raise RequestMismatch("tensors of one request disagree on the batch size")
            batch = shape[0]
        batch = batch or 1
        if not 1 <= batch <= max_batch:
            raise RequestMismatch(f"batch size {batch} is outside 1..{max_batch}")
        return batch


class TailBank:
    """Builds ``plan.split(cut)`` tails lazily and caches them with their input signature.

    Heads and tails share the model's parameters, so the model must already be on ``device``
    (the server moves it there once); ``example_input`` must be on ``device`` too."""

    def __init__(self, plan: Any, example_input: torch.Tensor, device: torch.device) -> None:
        self.plan = plan
        self.example_input = example_input
        self.device = device
        self._tails: dict[int, tuple[nn.Module, Signature]] = {}
        self._lock = threading.Lock()

    @property
    def n_cuts(self) -> int:
        return len(self.plan.cuts)

    def get(self, cut_index: int) -> tuple[nn.Module, Signature]:
        if not isinstance(cut_index, int) or isinstance(cut_index, bool) or not 0 <= cut_index < self.n_cuts:
            raise RequestMismatch(f"cut {cut_index!r} does not exist; this model has cuts 0..{self.n_cuts - 1}")
        with self._lock:
            if cut_index not in self._tails:
                # torch.fx gives a split its own copies of the tensors the graph reads as attributes
                # (a normalisation's mean and std, say), so moving the model to the device leaves
                # them behind: each part is moved too (its shared parameters are there already)
                head, tail = (part.to(self.device) for part in self.plan.split(self.plan.cuts[cut_index]))
                with torch.inference_mode():
                    signature = Signature.of(tuple(head(self.example_input)))
                self._tails[cut_index] = (tail.eval(), signature)
            return self._tails[cut_index]
