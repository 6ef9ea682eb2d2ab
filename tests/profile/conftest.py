"""A tiny sequential model with a plan-like object (cuts, candidates, split) for profiler tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn


class ToFloat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


def build_tiny_model(width: int = 8, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        ToFloat(),
        nn.Conv2d(3, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2, 3, stride=2, padding=1),  # the bottleneck: 2 channels at 1/4 size
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 10),
    ).eval()


@dataclass
class Cut:
    index: int
    name: str


class Head(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.body(x),)


class Tail(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, values: tuple[torch.Tensor]) -> torch.Tensor:
        return self.body(values[0])


class SequentialPlan:
    """Cut i sits after the first i layers: cut 0 is the input (full offloading), the last is the output."""

    def __init__(self, model: nn.Sequential, candidate_indices: tuple[int, ...]) -> None:
        self.model = model
        layers = list(model)
        self.cuts = [Cut(0, "input")] + [Cut(i, f"layer{i}") for i in range(1, len(layers))] + [
            Cut(len(layers), "output")]
        self.candidates = [self.cuts[i] for i in candidate_indices]

    def split(self, cut: Cut) -> tuple[nn.Module, nn.Module]:
        layers = list(self.model)
        return Head(layers[: cut.index]), Tail(layers[cut.index:])


def build_tiny_plan(model: nn.Sequential | None = None) -> SequentialPlan:
    model = model if model is not None else build_tiny_model()
    return SequentialPlan(model, candidate_indices=(0, 4, 7))  # input, after the bottleneck conv, output


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model(width=8)`` -> a fresh small model."""
    return build_tiny_model


@pytest.fixture
def tiny_plan():
    """Factory: ``tiny_plan(model=None)`` -> a plan over that model with three candidates."""
    return build_tiny_plan
