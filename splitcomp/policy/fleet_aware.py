"""Dynamic splitting for a device that knows it is not alone on its edge server.

Plain ``dynamic`` herds: every device reads the same quiet server from its last report and all
of them offload at once; the queue they build shows only in the next reports, and then all of
them leave together. Two remedies, each on or off:

* **Randomised choice among near-best cuts** (``margin`` > 0): any cut predicted within the
  fraction ``margin`` of the best is taken with equal probability, so devices whose predictions
  agree still spread over the cuts (and over the server's queue and the device's own compute).
* **A load forecast from the reported queue** (``forecast`` > 0): the queueing delay the
  server last reported is taken to persist, grown by ``forecast`` times the share of its
  requests this device expects others to add while its report ages (the report's age over the
  device's own request gap): offloading gets dearer the staler and the busier the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy
from splitcomp.policy.dynamic import predicted_latencies


class FleetAware(Policy):
    name = "fleet_aware"
    needs_rate_estimate = True

    def __init__(self, margin: float = 0.1, forecast: float = 0.0) -> None:
        if not 0 <= margin < 1:
            raise ConfigError(f"fleet_aware margin must be in [0, 1), got {margin}; set policy.margin.")
        if forecast < 0:
            raise ConfigError(f"fleet_aware forecast must be at least 0, got {forecast}; set policy.forecast.")
        self.margin = float(margin)
        self.forecast = float(forecast)
        self.rng = np.random.default_rng(0)
        self._last_t: float | None = None
        self._gap_s = 0.0
        self._report_t = 0.0

    def prepare(self, env: Any) -> None:
        self.rng = np.random.default_rng([int(env.seed), 0xF1EE7])  # each device draws its own
        self._last_t, self._gap_s, self._report_t = None, 0.0, 0.0

    def choose(self, ctx: DecisionContext) -> int:
        self._note_request(ctx.t)
        latencies = predicted_latencies(self._with_forecast(ctx))
        best = min(latencies)
        near = [i for i, latency in enumerate(latencies) if latency <= best * (1.0 + self.margin)]
        return int(near[self.rng.integers(len(near))]) if len(near) > 1 else near[0]

    def observe(self, record: Any) -> None:
        if record.server_s > 0 and not record.fallback:
            self._report_t = record.t_due + record.latency_s  # an answer just brought a fresh report

    def _note_request(self, t: float) -> None:
        if self._last_t is not None:
            gap = t - self._last_t
            self._gap_s = gap if self._gap_s == 0 else 0.8 * self._gap_s + 0.2 * gap
        self._last_t = t

    def _with_forecast(self, ctx: DecisionContext) -> DecisionContext:
        if self.forecast == 0 or ctx.load is None or ctx.load.queue_s <= 0 or self._gap_s <= 0:
            return ctx
        age = max(0.0, ctx.t - self._report_t)
        growth = 1.0 + self.forecast * min(age / self._gap_s, 10.0)
        load = dataclasses.replace(ctx.load, queue_s=ctx.load.queue_s * growth)
        return dataclasses.replace(ctx, load=load)
