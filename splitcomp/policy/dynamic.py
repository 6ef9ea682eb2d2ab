"""The dynamic split rule: per request, the cut with the lowest predicted latency.

The prediction uses only what the device can know: the rate estimate and the load the server
last reported (Bakhtiarnia et al., ICASSP 2023). Without any rate estimate the rate counts as
zero, which makes device-only the choice until a measurement arrives.
"""

from __future__ import annotations

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy, RunEnvironment


def predicted_latencies(ctx: DecisionContext) -> list[float]:
    """Predicted total latency (s) of every candidate from the context's estimates."""
    rate = ctx.rate_estimate_bps or 0.0
    model = ctx.latency_model
    return [
        model.predict(cut, rate, load=ctx.load, rtt_s=ctx.rtt_estimate_s).total_s for cut in ctx.candidates
    ]


def argmin(values: list[float]) -> int:
    """Index of the smallest value (the first one on ties)."""
    return min(range(len(values)), key=values.__getitem__)


class Dynamic(Policy):
    """Argmin of predicted latency; with ``hysteresis`` h > 0 the current cut is kept unless
    another one is predicted faster by more than the fraction h of the current prediction."""

    name = "dynamic"
    needs_rate_estimate = True

    def __init__(self, hysteresis: float = 0.0) -> None:
        if not 0 <= hysteresis < 1:
            raise ConfigError(f"dynamic hysteresis must be in [0, 1), got {hysteresis}; set policy.hysteresis.")
        self.hysteresis = float(hysteresis)
        self._current: int | None = None

    def prepare(self, env: RunEnvironment) -> None:
        self._current = None

    def choose(self, ctx: DecisionContext) -> int:
        latencies = predicted_latencies(ctx)
        best = argmin(latencies)
        current = self._current
        if current is not None and current < len(latencies) and self.hysteresis > 0:
            if latencies[best] >= (1.0 - self.hysteresis) * latencies[current]:
                best = current
        self._current = best
        return best
