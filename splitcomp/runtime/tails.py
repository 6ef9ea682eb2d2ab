"""The server's tails, one per cut, built on first use, with what each expects to receive."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitcomp.errors import PeerError


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
        if len(values) != len(self.items):
            raise PeerError(f"expected {len(self.items)} values for this cut, got {len(values)}")
        batch = None
        for value, expected in zip(values, self.items):
            if expected[0] == "value":
                if isinstance(value, torch.Tensor):
                    raise PeerError("expected a plain value, got a tensor")
                continue
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                raise PeerError("expected a batched tensor")
            if value.dtype != expected[1] or tuple(value.shape[1:]) != expected[2]:
                raise PeerError(f"tensor {value.dtype} {tuple(value.shape)} does not fit this cut, "
                                f"which carries {expected[1]} [N, {', '.join(map(str, expected[2]))}]")
            if batch is not None and value.shape[0] != batch:
                raise PeerError("tensors of one request disagree on the batch size")
            batch = value.shape[0]
        batch = batch or 1
        if not 1 <= batch <= max_batch:
            raise PeerError(f"batch size {batch} is outside 1..{max_batch}")
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
        if not isinstance(cut_index, int) or not 0 <= cut_index < self.n_cuts:
            raise PeerError(f"cut {cut_index!r} does not exist; this model has cuts 0..{self.n_cuts - 1}")
        with self._lock:
            if cut_index not in self._tails:
                head, tail = self.plan.split(self.plan.cuts[cut_index])
                with torch.inference_mode():
                    signature = Signature.of(tuple(head(self.example_input)))
                self._tails[cut_index] = (tail.eval(), signature)
            return self._tails[cut_index]
