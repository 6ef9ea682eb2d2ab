"""The simulator backend: serves each request of the request loop (:mod:`splitcomp.loop`) from the
latency model on the true channel trace and server load, in scenario time, with no sockets and
no tensors. Everything the loop decides (arrivals, waits, probes, the cut, fallbacks, the record)
is the same as on the real runtime; only serving differs.

A request at cut ``c`` started at ``t`` follows the real link step by step: the head
(``c.head_at(1)``), encoding, then the request frame (:meth:`LatencyModel.request_bytes`)
crosses the uplink trace after a one-way delay (half the RTT); the server decodes, queues and
runs the tail under the true load (:class:`~splitcomp.profile.queueing.TrueLoad`); the answer
frame crosses the downlink after the one-way delay. The upload follows the shaped link's chunk
schedule (:func:`~splitcomp.link.shaping.pace`, with the job's give-up rule). An upload or answer
that would take longer than the job's deadline is abandoned at the deadline, and an answer not
back within the job's ``answer_wait_s`` of the upload's end is given up then; the device finishes
the model (its device-only time less the head it already ran). A probe crosses the uplink the same way and its
answer (a report of the true load) the downlink.

Compute noise: ``noise=None`` (the default) draws each request's device and server time from
log-normal factors whose median is 1 and whose spread is the interquartile range the profiler
measured for that cut (``head_spread_s``, ``tail_spread_s``), so the simulated times scatter as
the measured ones did; ``noise=0`` turns it off; ``noise > 0`` uses that sigma for every cut with
mean-one factors. The factors are drawn per request, so every policy of a comparison sees the
same ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.link.shaping import pace
from splitcomp.loop import Job, ProbeResult, RunEnv, Served, Transfer, run_requests
from splitcomp.policy.base import Policy, device_rest_s
from splitcomp.policy.estimators import RateEstimator
from splitcomp.profile.latency import CutProfile, LatencyModel
from splitcomp.records import RECORD_FIELDS, RequestRecord, ServerReport
from splitcomp.scenario.arrivals import Arrivals
from splitcomp.scenario.trace import Trace

__all__ = ["RECORD_FIELDS", "RunEnv", "SimBackend", "SimRuntime", "compare_policies", "simulate", "simulate_env"]

IQR_IN_SIGMAS = 2 * 0.6744897501960817  # the interquartile range of a normal distribution, in sigmas

# Measured ratios of real to profiled compute: the same for the whole run, or by scenario time
Factors = Sequence[float] | Callable[[float], Sequence[float]]


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def spread_sigma(median_s: float, iqr_s: float) -> float:
    """Sigma of the median-one log-normal factor whose times have interquartile range ``iqr_s``
    around ``median_s``: IQR = 2 m sinh(0.674 sigma)."""
    if median_s <= 0 or iqr_s <= 0:
        return 0.0
    return math.asinh(iqr_s / (2 * median_s)) / (IQR_IN_SIGMAS / 2)


class SimBackend:
    """Serves the loop's requests and probes in scenario time (see the module docstring)."""

    def __init__(self, env: RunEnv, noise: float | None = None, device_factors: Factors = (),
                 server_factors: Factors = ()) -> None:
        """``device_factors`` and ``server_factors``, when given, replace the noise: each request's
        head (tail) time is the profiled one times a factor drawn from them, the ratios of real to
        profiled compute measured where the runtime runs (one request after an idle gap takes
        longer than the profiler's back-to-back calls). Given as a function of scenario time, the
        factors are those measured at the request's start (under the load of that moment, for
        example). The policies still see the profiles."""
        self.env = env
        self.device_factors = device_factors
        self.server_factors = server_factors
        self.model = env.latency_model
        self.uplink, self.downlink = env.uplink, env.downlink or env.uplink
        self.true_load = env.true_load()
        self.noise = None if noise is None else float(noise)
        self.noise_rng = np.random.default_rng([env.seed, 2])
        self.t = 0.0

    # --- the clock ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def has_input(self) -> bool:
        return True

    def reachable(self) -> bool:
        return True

    def _half_rtt(self, t: float) -> float:
        if self.env.rtt_s is not None:
            return float(self.env.rtt_s) / 2
        trace_rtt = self.uplink.rtt_at(t)
        return (self.model.default_rtt_s() if trace_rtt is None else trace_rtt) / 2

    def _transfer(self, trace: Trace, nbytes: int, t: float, deadline_s: float) -> float:
        """Seconds a frame sent at ``t`` takes, one-way delay included (> ``deadline_s``: abandoned)."""
        half = self._half_rtt(t)
        return half + trace.transfer_time(nbytes, t + half, max_time=max(deadline_s - half, 0.0))

    # --- compute noise -----------------------------------------------------------------------------
    def _factors(self, cut: CutProfile) -> tuple[float, float]:
        """(device, server) factors of this request: one draw per request whatever the cut."""
        z_device, z_server = self.noise_rng.standard_normal(2)
        if self.noise is not None:
            if self.noise == 0:
                device, server = 1.0, 1.0
            else:
                shift = -self.noise * self.noise / 2  # mean one
                device, server = math.exp(shift + self.noise * z_device), math.exp(shift + self.noise * z_server)
        else:
            head = spread_sigma(cut.head_at(1), cut.head_spread_s.get(1, 0.0))
            tail = spread_sigma(cut.tail_s.get(1, 0.0), cut.tail_spread_s.get(1, 0.0))
            device, server = math.exp(head * z_device), math.exp(tail * z_server)
        return self._measured(self.device_factors, z_device, device), self._measured(self.server_factors, z_server, server)

    def _measured(self, factors: Factors, z: float, otherwise: float) -> float:
        """A measured factor picked by the request's draw (the same draw for every policy)."""
        values = factors(self.t) if callable(factors) else factors
        if not len(values):
            return otherwise
        return float(values[min(int(_normal_cdf(z) * len(values)), len(values) - 1)])

    # --- serving ------------------------------------------------------------------------------------
    def serve(self, job: Job) -> Served:
        """The request; with ``job.probe``, that probe too, sent at the same moment (the device
        computes while the link carries it): the clock then ends past both."""
        probe = self._probe_at(self.t, job.probe.nbytes, job.probe.deadline_s) if job.probe is not None else None
        served = self._serve_request(job)
        if probe is not None:
            served.probe = probe
            self.t = max(self.t, probe.t_done)
        return served

    def _serve_request(self, job: Job) -> Served:
        cut, t = job.cut, self.t
        device_f, server_f = self._factors(cut)
        head_s = cut.head_at(1) * device_f
        overhead_s = self.model.overhead_s
        if cut.is_device_only:
            return self._done(Served(t + head_s + overhead_s, device_s=head_s, overhead_s=overhead_s))
        t_send = t + head_s + cut.encode_s
        sent = dict(device_s=head_s, encode_s=cut.encode_s, bytes_up=self.model.request_bytes(cut))
        half = self._half_rtt(t_send)
        schedule = pace(self.uplink, sent["bytes_up"], t_send + half, t_send + job.deadline_s, give_up=job.give_up)
        uplink_s = schedule.end_t - t_send
        if schedule.stopped:  # the deadline passed or the upload was given up
            upload = Transfer.abandoned(sent["bytes_up"], max(0.0, uplink_s - half), t_send, schedule.carried_bytes)
            return self._fallback(cut, schedule.end_t, device_f, uplink_s=uplink_s, upload=upload, **sent)
        upload = Transfer(sent["bytes_up"], uplink_s - half, t_send)
        queue_s, server_s, report = self._server_side(cut, t_send, t_send + uplink_s + cut.decode_s, server_f)
        t_reply = t_send + uplink_s + cut.decode_s + queue_s + server_s + overhead_s
        bytes_down = self.model.answer_bytes(cut)
        downlink_s = self._transfer(self.downlink, bytes_down, t_reply, job.deadline_s)
        t_failed = self._answer_failed_at(job, t_send + uplink_s, t_reply, downlink_s)
        if t_failed is not None:
            return self._fallback(cut, t_failed, device_f, uplink_s=uplink_s, upload=upload,
                                  downlink_s=t_failed - (t_send + uplink_s), **sent)
        report = dataclasses.replace(report, decode_s=cut.decode_s,
                                     handled_s=cut.decode_s + queue_s + server_s + overhead_s)
        return self._done(Served(t_reply + downlink_s, uplink_s=uplink_s, decode_s=cut.decode_s, queue_s=queue_s,
                                 server_s=server_s, overhead_s=overhead_s, downlink_s=downlink_s,
                                 bytes_down=bytes_down, report=report, upload=upload, **sent))

    @staticmethod
    def _answer_failed_at(job: Job, t_uploaded: float, t_reply: float, downlink_s: float) -> float | None:
        """When the device stops waiting for an answer sent at ``t_reply`` that takes ``downlink_s``
        (None: it arrives in time): past the job's deadline on the downlink (the server gives up
        on it), or ``job.answer_wait_s`` after the upload ended, whichever is first."""
        failed = [t_reply + job.deadline_s] if downlink_s > job.deadline_s else []
        if job.answer_wait_s is not None and t_reply + downlink_s - t_uploaded > job.answer_wait_s:
            failed.append(t_uploaded + job.answer_wait_s)
        return min(failed, default=None)

    def _server_side(self, cut: CutProfile, t_send: float, t_queued: float,
                     server_f: float) -> tuple[float, float, ServerReport]:
        """(queue_s, server_s, report) of a request sent at ``t_send`` and queued at the server at
        ``t_queued``: here from the true load model at ``t_send``; a fleet's shared server
        (:mod:`splitcomp.fleet.sim`) computes them from the other devices' requests."""
        load = self.true_load.at(t_send)
        queue_s, server_s = self.model.server_terms(cut, load)
        server_s *= server_f
        report = ServerReport(batch_size=load.batch_size, queue_len=load.queue_len, slowdown=load.slowdown,
                              queue_s=queue_s, tail_s=server_s / load.slowdown, server_s=server_s)
        return queue_s, server_s, report

    def _abandoned(self, nbytes: int, t_send: float, deadline_s: float) -> Transfer:
        """An upload given up ``deadline_s`` after ``t_send``, and what the link carried meanwhile."""
        half = self._half_rtt(t_send)
        carried = self.uplink.bits_between(t_send + half, t_send + deadline_s) / 8 if deadline_s > half else 0.0
        return Transfer.abandoned(nbytes, max(0.0, deadline_s - half), t_send, min(float(nbytes), carried))

    def _fallback(self, cut: CutProfile, t_failed: float, device_f: float, device_s: float, **parts: Any) -> Served:
        """The exchange failed at ``t_failed``: the device runs the rest of the model."""
        rest_s = device_rest_s(self.env.candidates, cut) * device_f
        return self._done(Served(t_failed + rest_s, device_s=device_s + rest_s, failed=True, **parts))

    def _done(self, served: Served) -> Served:
        self.t = served.t_done
        return served

    def probe(self, nbytes: int, deadline_s: float) -> ProbeResult:
        result = self._probe_at(self.t, nbytes, deadline_s)
        self.t = result.t_done
        return result

    def _probe_at(self, t: float, nbytes: int, deadline_s: float) -> ProbeResult:
        """A probe sent at ``t`` (the clock does not move)."""
        frame = self.model.frames.probe_bytes(nbytes)
        uplink_s = self._transfer(self.uplink, frame, t, deadline_s)
        if uplink_s > deadline_s:
            return ProbeResult(t + deadline_s, self._abandoned(frame, t, deadline_s))
        upload = Transfer(frame, uplink_s - self._half_rtt(t), t)
        answer_s = self._transfer(self.downlink, self.model.frames.probe_ack, t + uplink_s, deadline_s)
        if uplink_s + answer_s > deadline_s:
            return ProbeResult(t + deadline_s, upload)
        report = self._probe_report(t + uplink_s)
        return ProbeResult(t + uplink_s + answer_s, upload, report, rtt_s=uplink_s + answer_s - upload.seconds)

    def _probe_report(self, t: float) -> ServerReport:
        """What the server says about itself to a probe reaching it at ``t``."""
        load = self.true_load.at(t)
        return ServerReport(batch_size=load.batch_size, queue_len=load.queue_len, slowdown=load.slowdown,
                            queue_s=load.queue_s)


def simulate(candidates: list[CutProfile], latency_model: LatencyModel, policy: Policy,
             estimator: RateEstimator, arrivals: Arrivals, uplink: Trace, downlink: Trace | None = None,
             load_model: Any = None, n_requests: int = 100, seed: int = 0, rtt_s: float | None = None,
             timeout_s: float = 1.0, noise: float | None = None, client_share: float = 0.5,
             stats: dict | None = None, env: RunEnv | None = None) -> list[RequestRecord]:
    """Simulate ``n_requests`` requests of the request loop; one :class:`RequestRecord` per request.

    ``prediction``, ``reference`` and ``label`` are None (no tensors are computed). ``env``, when
    given, is the run's environment (the other arguments must agree with it; see
    :func:`simulate_env`). ``stats``, when given, receives the counts of ``probes``,
    ``failed_probes`` and ``fallbacks``."""
    if env is None:
        env = RunEnv(candidates, latency_model, policy, estimator, arrivals, uplink, downlink, load_model,
                     n_requests, seed, rtt_s, timeout_s, sim_options={"noise": noise, "client_share": client_share})
    env.check()
    return run_requests(env, SimBackend(env, noise), stats=stats)


def simulate_env(env: RunEnv, stats: dict | None = None) -> list[RequestRecord]:
    """``simulate`` on a ``RunEnv`` (with its ``sim_options``)."""
    env = dataclasses.replace(env, sim_options={"noise": None, "client_share": 0.5, **env.sim_options})
    env.check()
    return run_requests(env, SimBackend(env, env.sim_options["noise"]), stats=stats)


def compare_policies(env: RunEnv, policies: dict[str, Policy]) -> dict[str, list[RequestRecord]]:
    """Records of every policy on the same scenario (same traces, load, seed and arrivals)."""
    return {name: simulate_env(dataclasses.replace(env, policy=policy)) for name, policy in policies.items()}


class SimRuntime:
    """The simulator as a runtime (config ``runtime/sim.yaml``): ``run(env) -> records``.

    ``n_requests`` overrides the environment's when given; ``noise`` and ``client_share`` are the
    simulator options of the same names; ``probe`` lets policies that read the rate estimate probe."""

    needs_sockets = False

    def __init__(self, n_requests: int | None = None, noise: float | None = None, client_share: float = 0.5,
                 probe: bool = True) -> None:
        if noise is not None and noise < 0:
            raise ConfigError(f"runtime.noise must be non-negative or null (the profiles' spread), got {noise}.")
        self.n_requests = n_requests
        self.options = {"noise": None if noise is None else float(noise), "client_share": float(client_share)}
        self.probe = bool(probe)
        self.stats: dict[str, int] = {}
        self.records: list[RequestRecord] = []

    def run(self, env: RunEnv) -> list[RequestRecord]:
        env = dataclasses.replace(env, sim_options={**env.sim_options, **self.options}, probes=self.probe)
        if self.n_requests is not None:
            env = dataclasses.replace(env, n_requests=int(self.n_requests))
        self.stats = {}
        self.records = simulate_env(env, stats=self.stats)
        return self.records
