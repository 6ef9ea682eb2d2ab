"""The device side: heads per cut, run as the (optionally slowed-down) end device would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitcomp.profile.timing import run_on_device


@dataclass
class HeadRun:
    values: tuple[Any, ...]
    compute_s: float    # what this machine needed
    device_s: float     # what the emulated device took (compute dilated by the slowdown)


class Device:
    """Runs heads (and, as a fallback, whole models) on the end device."""

    def __init__(self, model: nn.Module, plan: Any, slowdown: float = 1.0) -> None:
        self.model = model
        self.plan = plan
        self.slowdown = slowdown
        self._heads: dict[int, nn.Module] = {}
        self._tails: dict[int, nn.Module] = {}

    def head(self, cut_index: int) -> nn.Module:
        if cut_index not in self._heads:
            self._heads[cut_index], self._tails[cut_index] = self.plan.split(self.plan.cuts[cut_index])
        return self._heads[cut_index]

    def run_head(self, cut_index: int, x: torch.Tensor) -> HeadRun:
        head = self.head(cut_index)
        with torch.inference_mode():
            values, compute_s, device_s = run_on_device(head, x, slowdown=self.slowdown)
        return HeadRun(tuple(values), compute_s, device_s)

    def run_tail_locally(self, cut_index: int, values: tuple[Any, ...]) -> tuple[torch.Tensor, float]:
        """Finish a request on the device when the server cannot (the fallback path)."""
        self.head(cut_index)
        with torch.inference_mode():
            out, _, device_s = run_on_device(self._tails[cut_index], values, slowdown=self.slowdown)
        return out, device_s

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The unsplit model's output on the same input (not timed; for agreement)."""
        with torch.inference_mode():
            return self.model(x)
