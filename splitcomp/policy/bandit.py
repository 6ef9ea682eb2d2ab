"""An online-learning baseline in the spirit of Autodidactic Neurosurgeon (Zhang et al., IEEE
IoT Journal 2021): no rate estimate and no load signal; the edge part of each cut's latency is
learnt from the latencies the requests really get.

Like ANS's µLinUCB, the arms are the cuts, the device part of each arm (head + encode, from the
profiles) is known, and the unknown edge delay (uplink + RTT + queue + tail + decode + downlink)
is linear in per-cut features shared by all arms:

    edge(cut) ~ theta . [bytes_up / max bytes_up, tail_s(1) / max tail_s(1), 1]

so ``theta`` reads as (seconds per full-input transfer, server slowdown, fixed delay) and one
observation on any cut teaches something about all of them. The choice is the lowest *lower*
confidence bound of the latency (optimism when minimising). Every observation discounts the past
by ``gamma`` (the channel and the server drift), which also makes the uncertainty of unused cuts
grow back, so the policy keeps re-trying offloading after it settled on device-only.

Differences from ANS: its µLinUCB weighs exploration by the front-end's computation budget
and its features come from the partitioned layers; here the features are the bytes and the tail
time of each profiled cut, and the discount replaces ANS's change handling.
"""

from __future__ import annotations

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy, RunEnvironment
from splitcomp.profile.latency import CutProfile
from splitcomp.records import RequestRecord


class Bandit(Policy):
    name = "bandit"

    def __init__(self, alpha: float = 0.1, gamma: float = 0.98, ridge: float = 1e-2) -> None:
        if alpha < 0 or not 0 < gamma <= 1 or ridge <= 0:
            raise ConfigError("bandit needs alpha >= 0, 0 < gamma <= 1 and ridge > 0; fix policy.alpha/gamma/ridge.")
        self.alpha, self.gamma, self.ridge = float(alpha), float(gamma), float(ridge)
        self._key: tuple[str, ...] | None = None

    def prepare(self, env: RunEnvironment) -> None:
        self._setup(env.candidates)

    def _setup(self, candidates: list[CutProfile]) -> None:
        self._key = tuple(c.name for c in candidates)
        self._index = {c.name: i for i, c in enumerate(candidates)}
        up = np.array([float(c.bytes_up) for c in candidates])
        tail = np.array([c.tail_at(1) for c in candidates])
        self._features = np.column_stack([up / max(up.max(), 1.0), tail / max(tail.max(), 1e-12), np.ones(len(up))])
        self._offloads = np.array([not c.is_device_only for c in candidates])
        self._device_s = np.array([c.head_at(1) + (0.0 if c.is_device_only else c.encode_s) for c in candidates])
        self._scale_s = float(self._device_s.max())  # the latency scale that sizes exploration
        self._a = np.zeros((3, 3))
        self._b = np.zeros(3)

    def lower_bounds(self) -> np.ndarray:
        """Optimistic latency (s) of every candidate: known device part + edge mean - width."""
        a_inv = np.linalg.inv(self._a + self.ridge * np.eye(3))
        theta = a_inv @ self._b
        x = self._features
        mean = x @ theta
        width = self.alpha * self._scale_s * np.sqrt(np.einsum("ij,jk,ik->i", x, a_inv, x))
        edge = np.where(self._offloads, np.maximum(mean - width, 0.0), 0.0)
        return self._device_s + edge

    def choose(self, ctx: DecisionContext) -> int:
        if self._key != tuple(c.name for c in ctx.candidates):
            self._setup(ctx.candidates)
        return int(np.argmin(self.lower_bounds()))

    def observe(self, record: RequestRecord) -> None:
        if self._key is None:
            return
        self._a *= self.gamma
        self._b *= self.gamma
        i = self._index.get(record.cut_name)
        if i is None or not self._offloads[i]:
            return
        # the edge part: what the request spent beyond its own device work and any wait before it
        edge_s = record.latency_s - record.wait_s - record.probe_s - record.device_s - record.encode_s
        x = self._features[i]
        self._a += np.outer(x, x)
        self._b += x * edge_s
