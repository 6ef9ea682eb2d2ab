"""The fleet experiments' workload: a small CNN whose natural bottleneck makes splitting pay,
profiled on this machine (the device's head time dilated by its slowdown, the server's tail at
every batch size), and the head outputs an emulated device sends.

The network is small so that tens of emulated devices and their server fit on a 2-core machine;
its tail is wide enough that a burst of offloaded requests loads the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.profile.latency import Profiles
from splitcomp.profile.profiler import profile_plan
from splitcomp.runtime.fingerprint import model_fingerprint
from splitcomp.split import analyze

INPUT_SHAPE = (1, 3, 64, 64)


class FleetNet(nn.Module):
    """uint8 image -> logits; an 8-channel bottleneck after two strided convolutions."""

    def __init__(self, width: int = 96, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.squeeze = nn.Conv2d(32, 8, 1)
        self.expand = nn.Conv2d(8, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        x = self.squeeze(x)
        x = torch.relu(self.expand(x))
        x = torch.relu(self.body(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class FleetWorkload:
    model: nn.Module
    plan: Any
    example: torch.Tensor
    codec: Codec
    fingerprint: dict[str, str]
    profiles: Profiles


def build_fleet_workload(device_slowdown: float = 20.0, batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
                         repeats: int = 5, seed: int = 0, width: int = 96,
                         device_only_s: float | None = None) -> FleetWorkload:
    """The model, its split plan and its profiles on this machine (one thread each side).

    ``device_only_s``, when given, sets the emulated device's speed instead of
    ``device_slowdown``: every head time is scaled so that the whole model takes that long on
    the device. The device is then the same on a quiet and on a loaded machine (a slowdown
    times this machine's measured head would change with the load while profiling)."""
    torch.manual_seed(seed)
    model = FleetNet(width).eval()
    example = torch.randint(0, 256, INPUT_SHAPE, dtype=torch.uint8)
    codec = RawCodec()
    plan = analyze(model, example, codec=codec)
    profiles = profile_plan(plan, example, codec, {"threads": 1, "slowdown": device_slowdown},
                            {"threads": 1, "device": "cpu"}, batch_sizes=list(batch_sizes), repeats=repeats,
                            progress=False)
    if device_only_s is not None:
        _pin_device(profiles, device_only_s)
    fingerprint = model_fingerprint(model, tuple(example.shape), example.dtype, codec)
    return FleetWorkload(model, plan, example, codec, fingerprint, profiles)


def _pin_device(profiles: Profiles, device_only_s: float) -> None:
    """Scale every head time (and spread) so that the device-only cut takes ``device_only_s``."""
    whole = next(c for c in profiles.cuts if c.is_device_only).head_at(1)
    scale = device_only_s / whole
    for cut in profiles.cuts:
        cut.head_s = {b: t * scale for b, t in cut.head_s.items()}
        cut.head_spread_s = {b: t * scale for b, t in cut.head_spread_s.items()}
