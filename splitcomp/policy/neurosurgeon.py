"""A Neurosurgeon-style baseline (Kang et al., ASPLOS 2017).

The original predicts each layer's latency on the mobile device and on the server with
regression models per layer type (latency against the layer's configuration: FLOPs, feature
sizes), sums them to get the head and tail time of every partition point, and picks the point
minimising ``head + transfer(bandwidth) + tail`` from the current bandwidth.

What this version keeps and what it does not:

* Kept: latency *regression* from computation, not the measured per-cut times, and the
  argmin over partition points from a bandwidth estimate.
* Changed: one linear regression per side over the candidate cuts (head time against the
  cumulative head FLOPs on the device, tail time against the tail FLOPs on the server) instead
  of per-layer-type models summed over layers; our profiles are per cut, not per layer.
  FLOPs come from ``flops`` (cut name -> [head_flops, tail_flops]) or from ``head_flops`` /
  ``tail_flops`` attributes of the profiles; without either, the profiled times are used as they
  are (no regression at all), which reduces the policy to an argmin on an idle server.
* Bandwidth: the runtime's rate estimate (passive, refreshed by probes when stale) stands in
  for Neurosurgeon's bandwidth measurement.
* Server load: none. The original also tracks datacenter load; this baseline deliberately
  assumes an idle server so that it isolates what the load signal is worth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy, RunEnvironment
from splitcomp.policy.dynamic import argmin
from splitcomp.profile.latency import CutProfile, ServerLoad


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept`` (a constant when x does not vary)."""
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


class Neurosurgeon(Policy):
    name = "neurosurgeon"
    needs_rate_estimate = True

    def __init__(self, flops: dict[str, list[float]] | None = None) -> None:
        self.flops = {str(k): (float(v[0]), float(v[1])) for k, v in (flops or {}).items()}
        self._key: tuple[str, ...] | None = None
        self._modelled: list[CutProfile] = []

    def prepare(self, env: RunEnvironment) -> None:
        self._fit(env.candidates)

    def _cut_flops(self, cut: CutProfile) -> tuple[float, float] | None:
        if cut.name in self.flops:
            return self.flops[cut.name]
        head, tail = getattr(cut, "head_flops", None), getattr(cut, "tail_flops", None)
        return None if head is None or tail is None else (float(head), float(tail))

    def _fit(self, candidates: list[CutProfile]) -> None:
        """Replace every candidate's head and tail time by the regression's prediction."""
        self._key = tuple(c.name for c in candidates)
        flops = [self._cut_flops(c) for c in candidates]
        if any(f is None for f in flops):
            if self.flops:
                missing = [c.name for c, f in zip(candidates, flops, strict=True) if f is None]
                raise ConfigError(f"neurosurgeon flops lack the cuts {missing}; give [head, tail] FLOPs for every candidate.")
            self._modelled = list(candidates)
            return
        head_x = np.array([f[0] for f in flops])
        tail_x = np.array([f[1] for f in flops])
        head_y = np.array([c.head_at(1) for c in candidates])
        offloading = np.array([not c.is_device_only for c in candidates])
        tail_y = np.array([c.tail_at(1) for c in candidates])
        head_line = fit_line(head_x, head_y)
        tail_line = fit_line(tail_x[offloading], tail_y[offloading]) if offloading.any() else (0.0, 0.0)
        self._modelled = [
            dataclasses.replace(
                c,
                head_s={1: max(0.0, head_line[0] * hx + head_line[1])},
                tail_s={1: max(0.0, tail_line[0] * tx + tail_line[1])},
            )
            for c, hx, tx in zip(candidates, head_x, tail_x, strict=True)
        ]

    def predicted_latencies(self, ctx: DecisionContext) -> list[float]:
        """Latency of every candidate from the regressed times, the rate estimate and an idle server."""
        if self._key != tuple(c.name for c in ctx.candidates):
            self._fit(ctx.candidates)
        rate = ctx.rate_estimate_bps or 0.0
        idle = ServerLoad()
        return [ctx.latency_model.predict(c, rate, load=idle, rtt_s=ctx.rtt_estimate_s).total_s for c in self._modelled]

    def choose(self, ctx: DecisionContext) -> int:
        return argmin(self.predicted_latencies(ctx))
