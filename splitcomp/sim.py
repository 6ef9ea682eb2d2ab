"""Trace-driven simulator: the socket runtime's request loop with the latency model in place of
real tensors and sockets.

One request at scenario time ``t``:

1. Measurements and load reports whose answers have arrived by ``t`` reach the estimator and the
   policy's view of the server; if the rate estimate is stale (``estimator.needs_probe``) and no
   probe is in flight, a probe of ``estimator.probe_bytes`` is sent in the background. Its
   measurement (and the load report piggybacked on its answer) arrives one transfer plus one RTT
   later; it shares nothing with the requests (no contention is modelled).
2. The policy chooses a cut from a ``DecisionContext`` holding the estimates (and, for hindsight
   policies, the true traces and load). The rate estimate is capped by the transfers still open
   (``InFlight``): bytes not yet through after s seconds bound the rate from above.
3. The true latency is ``LatencyModel.predict_on_trace`` on the true uplink/downlink traces and
   the true server load at ``t``. An uplink that needs more than ``timeout_s`` (an outage) is
   abandoned: the device finishes the model itself (``fallback``), costing the timeout plus the
   rest of the device-only time. ``noise`` > 0 scales device and server compute by seeded
   mean-one log-normal factors, so predictions are visibly imperfect.
4. The uplink transfer (bytes over its true time) is fed to the estimator when the response
   arrives; device-only requests feed nothing. The record goes to ``policy.observe`` then too.

Server load (``load_model``: ``batch_at``, ``slowdown_at``, ``clients_at`` at time ``t``): the tail
runs in a batch of ``batch_at(t)`` (its batch time from the profiles), scaled by ``slowdown_at(t)``;
each of the ``clients_at(t)`` background clients adds a share of one background request's
server time (batch 1, slowed down: the tail of the load model's ``cut`` when it names a
candidate, else full offloading) to the queueing delay. The share is how often the client has a
request ahead of ours: its utilisation ``rate_hz * tail`` when it sends at ``rate_hz``, else
``client_share`` (closed-loop clients).

Arrivals decide the next start from the previous start and end; open-loop arrivals (periodic,
poisson) give every policy the same start times for the same seed.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.policy.base import DecisionContext, Policy, device_only_index, full_offload_index
from splitcomp.policy.estimators import InFlight, RateEstimator, capped
from splitcomp.profile.latency import CutProfile, LatencyBreakdown, LatencyModel, ServerLoad
from splitcomp.scenario.arrivals import Arrivals
from splitcomp.scenario.trace import Trace

RECORD_FIELDS = (
    "request", "t_start", "cut", "cut_name", "bytes_up", "bytes_down", "device_s", "encode_s", "uplink_s",
    "queue_s", "server_s", "downlink_s", "decode_s", "latency_s", "predicted_latency_s", "rate_trace_bps",
    "rate_estimate_bps", "server_load", "fallback", "prediction", "reference", "label",
)


@dataclass
class RunEnv:
    """Everything one run needs, built by the run task; the socket runtime takes the same fields.

    ``rtt_s``: the true round-trip time when the uplink trace has none (None: the latency model's).
    ``timeout_s``: an uplink transfer taking longer is abandoned and the request falls back to the
    device. ``sim_options``: extra ``simulate`` keywords (``noise``, ``client_share``), so that
    hindsight policies simulating the scenario in ``prepare`` see the same simulator.
    """

    candidates: list[CutProfile]
    latency_model: LatencyModel
    policy: Policy
    estimator: RateEstimator
    arrivals: Arrivals
    uplink: Trace
    downlink: Trace | None = None
    load_model: Any = None
    n_requests: int = 100
    seed: int = 0
    rtt_s: float | None = None
    timeout_s: float = 1.0
    sim_options: dict[str, Any] = field(default_factory=dict)


class _Events:
    """Things that become known to the device at a later scenario time (answers, measurements)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), action))

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            heapq.heappop(self._heap)[2]()


class _Simulation:
    def __init__(self, candidates: list[CutProfile], latency_model: LatencyModel, policy: Policy,
                 estimator: RateEstimator, arrivals: Arrivals, uplink: Trace, downlink: Trace | None,
                 load_model: Any, seed: int, rtt_s: float | None, timeout_s: float, noise: float,
                 client_share: float) -> None:
        if not candidates:
            raise ConfigError("no candidate cuts to simulate; check the split plan and profiles.")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s}; set runtime.timeout_s > 0.")
        self.candidates, self.model, self.policy, self.estimator = candidates, latency_model, policy, estimator
        self.arrivals, self.uplink, self.downlink, self.load_model = arrivals, uplink, downlink, load_model
        self.rtt_s, self.timeout_s, self.noise, self.client_share = rtt_s, float(timeout_s), float(noise), client_share
        self.arrival_rng = np.random.default_rng([seed, 1])
        self.noise_rng = np.random.default_rng([seed, 2])
        self.device_only_s = candidates[device_only_index(candidates)].head_at(1)
        self.bg_service_s, self.bg_share = self._background(client_share)
        self.events = _Events()
        self.reported_load = ServerLoad()
        self.rtt_estimate_s = rtt_s
        self.probe_in_flight = False
        self.in_flight = InFlight()
        self.stats = {"probes": 0, "fallbacks": 0}

    # --- scenario ---------------------------------------------------------------------------
    def _background(self, client_share: float) -> tuple[float, float]:
        """Server time of one background request (batch 1, before slowdown) and the share of
        time a background client has one ahead of ours: its utilisation ``rate_hz * service``
        when it sends at a rate, else ``client_share`` (closed-loop clients)."""
        by_name = {c.name: c for c in self.candidates}
        cut = by_name.get(getattr(self.load_model, "cut", None), self.candidates[full_offload_index(self.candidates)])
        service_s = cut.tail_at(1)
        rate_hz = getattr(self.load_model, "rate_hz", None)
        share = client_share if rate_hz is None else min(1.0, float(rate_hz) * service_s)
        return service_s, share

    def true_load(self, t: float) -> ServerLoad:
        if self.load_model is None:
            return ServerLoad()
        slowdown = float(self.load_model.slowdown_at(t))
        clients = int(self.load_model.clients_at(t))
        queue_s = clients * self.bg_share * self.bg_service_s * slowdown
        return ServerLoad(batch_size=max(1, int(self.load_model.batch_at(t))), queue_len=clients,
                          slowdown=slowdown, queue_s=queue_s)

    def _rtt_at(self, t: float) -> float:
        if self.rtt_s is not None:
            return float(self.rtt_s)
        trace_rtt = self.uplink.rtt_at(t)
        return self.model.default_rtt_s() if trace_rtt is None else trace_rtt

    # --- what the device learns -----------------------------------------------------------
    def _measured(self, nbytes: float, seconds: float, t_known: float, t_sent: float,
                  load: ServerLoad | None) -> None:
        """At ``t_known`` the device learns a transfer's measurement (and the server's load report
        carried by the answer; None when no answer came)."""

        def deliver() -> None:
            self.estimator.update(nbytes, seconds, t_known)
            if load is not None:
                self.reported_load = load
            if self.rtt_s is None and self.uplink.rtts_s is not None:
                self.rtt_estimate_s = self.uplink.rtt_at(t_sent)

        self.events.at(t_known, deliver)

    def _probe(self, t: float) -> None:
        """A small background transfer that refreshes a stale estimate (and the load report).
        It has no timeout: while it is open it caps the estimate (``InFlight``), and it ends
        when the channel has carried it, however long an outage lasts."""
        nbytes = self.estimator.probe_bytes
        seconds = self.uplink.transfer_time(nbytes, t)
        self.probe_in_flight = True
        self.stats["probes"] += 1
        self.in_flight.start("probe", nbytes, t)
        if math.isinf(seconds):
            return  # the trace never carries data: the probe never ends
        t_known = t + seconds + self._rtt_at(t)
        self._measured(nbytes, seconds, t_known, t, self.true_load(t))
        self.events.at(t_known, self._probe_done)

    def _probe_done(self) -> None:
        self.probe_in_flight = False
        self.in_flight.finish("probe")

    # --- one request ------------------------------------------------------------------------
    def context(self, t: float) -> DecisionContext:
        est = self.estimator
        return DecisionContext(
            t=t, candidates=self.candidates, latency_model=self.model,
            rate_estimate_bps=capped(est.estimate(t), self.in_flight.cap_bps(t)),
            rate_estimate_age_s=est.age(t), rtt_estimate_s=self.rtt_estimate_s, load=self.reported_load,
            uplink=self.uplink, downlink=self.downlink, true_load=self.true_load(t), true_rtt_s=self.rtt_s,
        )

    def serve(self, i: int, t: float, cut: CutProfile, ctx: DecisionContext) -> dict:
        load = ctx.true_load or ServerLoad()
        parts = self.model.predict_on_trace(cut, self.uplink, t, self.downlink, load, rtt_s=self.rtt_s)
        t_send = t + parts.device_s + parts.encode_s  # when the channel times were taken
        if self.noise > 0:
            self._add_noise(parts)
        fallback = not cut.is_device_only and parts.uplink_s > self.timeout_s
        up_bytes = 0 if cut.is_device_only else cut.bytes_up + self.model.frame_overhead_bytes
        if fallback:
            parts = self._fallback(parts, cut)
            carried = self.uplink.bits_between(t_send, t_send + self.timeout_s) / 8.0
            self._sent(i, up_bytes, t_send, t_send + self.timeout_s)
            self._measured(carried, self.timeout_s, t_send + self.timeout_s, t_send, None)
            self.stats["fallbacks"] += 1
        elif not cut.is_device_only:
            self._sent(i, up_bytes, t_send, t + parts.total_s)
            self._measured(up_bytes, parts.uplink_s, t + parts.total_s, t_send, load)
        return self._record(i, t, cut, ctx, parts, up_bytes, load, fallback)

    def _sent(self, i: int, nbytes: int, t_send: float, t_answer: float) -> None:
        """The uplink of request ``i`` is open from ``t_send`` until its answer (or timeout)."""
        self.in_flight.start(i, nbytes, t_send)
        self.events.at(t_answer, lambda: self.in_flight.finish(i))

    def _add_noise(self, parts: LatencyBreakdown) -> None:
        sigma = self.noise
        device_f, server_f = np.exp(self.noise_rng.normal(-sigma * sigma / 2, sigma, size=2))
        delta = parts.device_s * (device_f - 1) + parts.server_s * (server_f - 1)
        parts.device_s *= device_f
        parts.server_s *= server_f
        parts.total_s += delta

    def _fallback(self, parts: LatencyBreakdown, cut: CutProfile) -> LatencyBreakdown:
        """The uplink timed out: the device runs the rest of the model itself."""
        device_s = max(parts.device_s, self.device_only_s)
        total = device_s + parts.encode_s + self.timeout_s + self.model.overhead_s
        return LatencyBreakdown(device_s=device_s, encode_s=parts.encode_s, uplink_s=self.timeout_s, total_s=total)

    def _record(self, i: int, t: float, cut: CutProfile, ctx: DecisionContext, parts: LatencyBreakdown,
                up_bytes: int, load: ServerLoad, fallback: bool) -> dict:
        estimate = ctx.rate_estimate_bps
        predicted = self.model.predict(cut, estimate, load=ctx.load, rtt_s=ctx.rtt_estimate_s).total_s
        offloaded = not (cut.is_device_only or fallback)
        return {
            "request": i, "t_start": t, "cut": cut.index, "cut_name": cut.name, "bytes_up": up_bytes,
            "bytes_down": cut.bytes_down + self.model.frame_overhead_bytes if offloaded else 0,
            "device_s": parts.device_s, "encode_s": parts.encode_s, "uplink_s": parts.uplink_s,
            "queue_s": parts.queue_s, "server_s": parts.server_s, "downlink_s": parts.downlink_s,
            "decode_s": parts.decode_s, "latency_s": parts.total_s,
            "predicted_latency_s": predicted if math.isfinite(predicted) else math.nan,
            "rate_trace_bps": self.uplink.rate_at(t), "rate_estimate_bps": math.nan if estimate is None else estimate,
            "server_load": load.batch_size if load.batch_size > 1 else load.queue_len, "fallback": fallback,
            "prediction": None, "reference": None, "label": None,
        }

    def run(self, n_requests: int) -> list[dict]:
        records = []
        t = 0.0
        for i in range(n_requests):
            self.events.run_until(t)
            if not self.probe_in_flight and self.estimator.needs_probe(t):
                self._probe(t)
            ctx = self.context(t)
            k = self.policy.choose(ctx)
            record = self.serve(i, t, self.candidates[k], ctx)
            t_end = t + record["latency_s"]
            self.events.at(t_end, lambda r=record: self.policy.observe(r))
            records.append(record)
            t = self.arrivals.next_start(t, t_end, self.arrival_rng)
        return records


def simulate(candidates: list[CutProfile], latency_model: LatencyModel, policy: Policy,
             estimator: RateEstimator, arrivals: Arrivals, uplink: Trace, downlink: Trace | None = None,
             load_model: Any = None, n_requests: int = 100, seed: int = 0, rtt_s: float | None = None,
             timeout_s: float = 1.0, noise: float = 0.0, client_share: float = 0.5,
             stats: dict | None = None, env: RunEnv | None = None) -> list[dict]:
    """Simulate ``n_requests`` requests; one record dict (fields ``RECORD_FIELDS``) per request.

    As in the socket runtime, a missing number (no rate estimate yet, an infinite prediction)
    is NaN; ``prediction``, ``reference`` and ``label`` are None (no tensors are computed);
    ``server_load`` is the batch size when batching, else the queue length.

    ``policy.prepare(env)`` is called first (``env`` is built from the arguments when not given),
    then the estimator is reset and bound to the uplink. ``stats``, when given, receives the
    counts of ``probes`` and ``fallbacks``."""
    if n_requests < 1:
        raise ConfigError(f"n_requests must be at least 1, got {n_requests}; set runtime.n_requests.")
    if env is None:
        env = RunEnv(candidates, latency_model, policy, estimator, arrivals, uplink, downlink, load_model,
                     n_requests, seed, rtt_s, timeout_s, {"noise": noise, "client_share": client_share})
    policy.prepare(env)
    estimator.reset()
    estimator.bind(uplink)
    sim = _Simulation(candidates, latency_model, policy, estimator, arrivals, uplink, downlink, load_model,
                      seed, rtt_s, timeout_s, noise, client_share)
    records = sim.run(n_requests)
    if stats is not None:
        stats.update(sim.stats)
    return records


def simulate_env(env: RunEnv, stats: dict | None = None) -> list[dict]:
    """``simulate`` on a ``RunEnv`` (with its ``sim_options``)."""
    return simulate(env.candidates, env.latency_model, env.policy, env.estimator, env.arrivals, env.uplink,
                    env.downlink, env.load_model, env.n_requests, env.seed, env.rtt_s, env.timeout_s,
                    stats=stats, env=env, **env.sim_options)


def compare_policies(env: RunEnv, policies: dict[str, Policy]) -> dict[str, list[dict]]:
    """Records of every policy on the same scenario (same traces, load, seed and arrivals)."""
    return {name: simulate_env(dataclasses.replace(env, policy=policy)) for name, policy in policies.items()}


class SimRuntime:
    """The simulator as a runtime (config ``runtime/sim.yaml``): ``run(env) -> records``.

    ``n_requests`` overrides the environment's when given; ``noise`` and ``client_share`` are the
    ``simulate`` options of the same names."""

    needs_sockets = False

    def __init__(self, n_requests: int | None = None, noise: float = 0.0, client_share: float = 0.5) -> None:
        if noise < 0:
            raise ConfigError(f"runtime.noise must be non-negative, got {noise}.")
        self.n_requests = n_requests
        self.options = {"noise": float(noise), "client_share": float(client_share)}
        self.stats: dict[str, int] = {}

    def run(self, env: RunEnv) -> list[dict]:
        env = dataclasses.replace(env, sim_options={**env.sim_options, **self.options})
        if self.n_requests is not None:
            env = dataclasses.replace(env, n_requests=int(self.n_requests))
        self.stats = {}
        return simulate_env(env, stats=self.stats)
