"""Dynamic splitting for a device that knows it is not alone on its edge server.

Plain ``dynamic`` herds: the members of one batch get the same report at the same moment and
decide alike, and a fleet that (re)connects at once offloads at once. Worse, a device that left
the server reads only stale news of it afterwards: its last answer's report, and probe answers
whose recent mean queueing delay changes only when some request is served. When the whole fleet
has left, that mean never drops, and every device keeps believing the server is swamped while
it idles. Two remedies, each on or off:

* **Randomised choice among near-best cuts** (``margin`` > 0): any cut predicted within the
  fraction ``margin`` of the best is taken with equal probability, so devices whose predictions
  agree still spread over the cuts (and over the server's queue and the device's own compute).
* **Randomised back-off on stale reports** (``retry_s`` > 0): once the device's last answer is
  older than a horizon drawn uniformly from ``[0.5, 1.5] x retry_s x 2^k``, it predicts as if
  the server were idle, so its next choice may offload and bring a fresh report. ``k`` counts
  the horizons in a row that ended with the device leaving the server again (at most
  ``max_backoff``), so a server that really is swamped is retried ever less often; the random
  horizon keeps devices that left together from coming back together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy
from splitcomp.policy.dynamic import predicted_latencies
from splitcomp.records import ServerLoad


class FleetAware(Policy):
    name = "fleet_aware"
    needs_rate_estimate = True

    def __init__(self, margin: float = 0.1, retry_s: float = 0.0, max_backoff: int = 4) -> None:
        if not 0 <= margin < 1:
            raise ConfigError(f"fleet_aware margin must be in [0, 1), got {margin}; set policy.margin.")
        if retry_s < 0:
            raise ConfigError(f"fleet_aware retry_s must be at least 0, got {retry_s}; set policy.retry_s.")
        if max_backoff < 0:
            raise ConfigError(f"fleet_aware max_backoff must be at least 0, got {max_backoff}; set policy.max_backoff.")
        self.margin = float(margin)
        self.retry_s = float(retry_s)
        self.max_backoff = int(max_backoff)
        self.rng = np.random.default_rng(0)
        self._reset()

    def _reset(self) -> None:
        self._answered_t = 0.0  # when the last answer (a fresh report) arrived
        self._horizon_s = 0.0
        self._backoffs = 0
        self._retrying = False  # the last choice was made as if the server were idle

    def prepare(self, env: Any) -> None:
        self.rng = np.random.default_rng([int(env.seed), 0xF1EE7])  # each device draws its own
        self._reset()
        self._horizon_s = self._draw_horizon()

    def choose(self, ctx: DecisionContext) -> int:
        self._retrying = self.retry_s > 0 and ctx.t - self._answered_t > self._horizon_s
        if self._retrying:
            ctx = dataclasses.replace(ctx, load=ServerLoad())
        latencies = predicted_latencies(ctx)
        best = min(latencies)
        near = [i for i, latency in enumerate(latencies) if latency <= best * (1.0 + self.margin)]
        return int(near[self.rng.integers(len(near))]) if len(near) > 1 else near[0]

    def observe(self, record: Any) -> None:
        if record.server_s > 0 and not record.fallback:  # an answer: a fresh report
            self._answered_t = record.t_due + record.latency_s
            # an answer to a retry counts one more back-off, until the device stays on the server
            self._backoffs = min(self._backoffs + 1, self.max_backoff) if self._retrying else 0
            self._horizon_s = self._draw_horizon()

    def _draw_horizon(self) -> float:
        return float(self.rng.uniform(0.5, 1.5)) * self.retry_s * 2 ** self._backoffs
