"""Hindsight policies: lower bounds that read the true channel and the true server load."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy, RunEnvironment
from splitcomp.policy.dynamic import argmin
from splitcomp.policy.simple import Static
from splitcomp.records import RequestRecord


class Oracle(Policy):
    """Per request, the cut that is fastest on the true trace and the true load.

    The latency of each candidate is ``LatencyModel.predict_on_trace`` from the request's start,
    i.e. exactly what the simulator charges, so in the simulator (without noise) no policy is
    faster on any request started at the same time."""

    name = "oracle"

    def choose(self, ctx: DecisionContext) -> int:
        if ctx.uplink is None:
            raise ConfigError("the oracle policy needs the true uplink trace; run it in the simulator or with a channel trace.")
        load = ctx.true_load if ctx.true_load is not None else ctx.load
        model = ctx.latency_model
        latencies = [
            model.predict_on_trace(cut, ctx.uplink, ctx.t, ctx.downlink, load, rtt_s=ctx.true_rtt_s).total_s
            for cut in ctx.candidates
        ]
        return argmin(latencies)


class BestStatic(Policy):
    """The single cut with the lowest mean latency over the whole scenario, found in hindsight
    by simulating every static choice on the run's environment in ``prepare``.

    ``simulate(env) -> records`` runs an environment in the simulator (config: ``splitcomp.sim.simulate_env``);
    it is handed in because the simulator itself runs policies."""

    name = "best_static"

    def __init__(self, simulate: Callable[[RunEnvironment], Sequence[RequestRecord]] | None = None) -> None:
        self.simulate = simulate
        self.index: int | None = None
        self.means_s: dict[str, float] = {}

    def prepare(self, env: RunEnvironment) -> None:
        if self.simulate is None:
            raise ConfigError("best_static needs a simulate function to find the best cut in hindsight; "
                              "compose it from conf/policy/best_static.yaml or pass simulate=splitcomp.sim.simulate_env.")
        self.means_s = {}
        for i, cut in enumerate(env.candidates):
            records = self.simulate(dataclasses.replace(env, policy=Static(i)))
            self.means_s[cut.name] = sum(r["latency_s"] for r in records) / len(records)
        names = [c.name for c in env.candidates]
        self.index = argmin([self.means_s[n] for n in names])

    def choose(self, ctx: DecisionContext) -> int:
        if self.index is None:
            raise ConfigError("best_static was not prepared with the run's scenario; call prepare(env) first.")
        return self.index
