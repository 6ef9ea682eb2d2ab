"""The one request loop: the simulator and the real runtime run every request through it.

The loop owns everything a run decides; a :class:`Backend` only *serves*: one request at the cut
the loop chose (``serve``), or one rate probe (``probe``), and says what happened in typed
results (:class:`Served`, :class:`ProbeResult`). :mod:`splitcomp.sim` serves from the latency
model on the true trace and load; :mod:`splitcomp.runtime.socket_runtime` with real tensors over
the real link. Both therefore share these semantics:

**Arrivals and overload.** Request 0 is due at scenario time 0, request ``i + 1`` at
``arrivals.next_start(due_i, done_i, rng)``. One device serves one request at a time, in arrival
order: a request due at ``t_due`` starts at ``max(t_due, end of the previous one)`` (later still if
a probe holds it back), and its latency runs from ``t_due`` to the moment its answer is usable on
the device. The parts of that latency are the fields of :class:`~splitcomp.records.RequestRecord`.

**Decisions.** At the start of a request the loop builds a :class:`DecisionContext`: the rate
estimate, capped by the transfers the device abandoned since the last one that completed (see
:class:`~splitcomp.policy.estimators.InFlight`: b bytes not through after s seconds bound the rate
by 8b/s), an RTT estimate measured by probes, the last :class:`~splitcomp.records.ServerReport`
and, for hindsight policies, the true traces and load (:class:`~splitcomp.profile.queueing.TrueLoad`,
the same on both runtimes). The policy chooses the cut unless the backend knows the server to be
unreachable (a failed connection, during its back-off): then the request runs on the device and
is recorded as a fallback. ``policy.observe(record)`` follows every request.

**Fallbacks.** An upload or an answer that takes longer than the run's ``timeout_s`` (the link's
``max_transfer_s``), a lost connection or any :class:`~splitcomp.errors.PeerError` during an
exchange is a failed exchange: the device finishes the model itself, and every second spent
before is inside the request's latency. A server that refuses the device's model in the
handshake (:class:`~splitcomp.runtime.client.HandshakeError`) ends the run instead.

**Deadline-aware give-up.** For policies that read the rate estimate (and with
``RunEnv.give_up``), each upload carries a :class:`~splitcomp.link.shaping.GiveUp` rule: once it
runs past the time it should take at the estimate (with some slack), it is abandoned as soon as the rate seen so
far says the rest of it would take longer than the device needs to finish the request alone. The
request then falls back (counted in ``fallbacks``) and the abandoned upload informs the estimate,
as at a deadline.

**Waiting for the answer** (same policies): after a completed upload the device waits for the
answer ``ANSWER_SLACK`` times the wait the latency model expects (decoding, queue, tail, answer
and round trip under the last report) plus the longer of ``ANSWER_MIN_EXTRA_S`` and the rest of
the model on the device, then finishes the request alone (a fallback). Beyond its expected wait a
late answer then costs at most about twice what finishing alone at once would have (the
ski-rental rule), where a stalled server or a dead downlink used to cost the whole ``timeout_s``.
An answer that did not come bounds the server's side from below (as its queueing delay) until
the next report, so the device does not keep offloading into what it cannot see.

**Probes.** Only policies that read the rate estimate (``Policy.needs_rate_estimate``) probe:
the device sends ``estimator.probe_bytes`` of filler (fewer when the estimate says they would not
cross within a quarter of the probe's deadline, or before the due time; ``MIN_PROBE_BYTES``
while there is no estimate, or one of zero) and the server acknowledges it with its report.
There are two kinds, at most one probe per ``estimator.max_age_s`` in all:

* *beside a device-only request*: when the estimate will be stale by the end of the
  computation, the probe is sent while the device computes (the link is idle then), with
  ``ALONGSIDE_PROBE_SHARE`` of the device-only time as its deadline; it costs the request
  nothing, and a device kept busy on its own (a backlog, an outage) still sees the channel
  come back. Should it outlast the computation, the next request cannot start before it ends
  (that overrun is the next request's ``probe_s``).
* *before a request*, when the estimate will be stale at its due time (``estimator.needs_probe``).
  Once it has an estimate, the device does not send one that would hold the request back (the
  request is already due, or the smallest probe could not cross and come back before it): the
  probe beside the request, or the request's own upload, measures the link instead; an estimate
  ``STALE_ESTIMATE_S`` old is probed all the same. Such a probe starts as late as it can while
  still ending by the due time if it succeeds within its deadline (``probe_timeout_s`` before the
  due time, or when the device becomes free if that is later), so it costs a request nothing
  unless it runs past the due time: that overrun is the request's ``probe_s``.

A probe that has not been answered within ``probe_timeout_s`` (default: the model's device-only
time, beyond which no offloading can pay) is abandoned. An abandoned upload (probe or request)
feeds the estimator the bytes the link carried before the deadline, and bounds the estimate by
its bytes over the time it had until an upload completes. A completed probe upload feeds the
estimator (its bytes over the shaped transfer time, one-way delay taken off, as for requests);
its answer updates the server report and the RTT estimate (round trip less the shaped upload).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from splitcomp.errors import ConfigError
from splitcomp.link.shaping import GiveUp
from splitcomp.policy.base import DecisionContext, Policy, device_only_index, device_rest_s
from splitcomp.policy.estimators import InFlight, RateEstimator, capped
from splitcomp.profile.latency import CutProfile, LatencyBreakdown, LatencyModel
from splitcomp.profile.queueing import TrueLoad
from splitcomp.records import RequestRecord, ServerLoad, ServerReport
from splitcomp.scenario.arrivals import Arrivals
from splitcomp.scenario.trace import Trace

RTT_WEIGHT = 0.5  # EWMA weight of the newest RTT sample
# an upload counts as slower than expected past this multiple of its time at the estimate, plus
# GIVE_UP_MIN_S (the pacer's timing jitter): estimates are never exact
GIVE_UP_SLACK = 1.5
GIVE_UP_MIN_S = 0.002
# an answer is waited for ANSWER_SLACK times its expected wait plus the longer of
# ANSWER_MIN_EXTRA_S and the rest of the model on the device
ANSWER_SLACK = 1.5
ANSWER_MIN_EXTRA_S = 0.02
MIN_PROBE_BYTES = 1024  # a probe sized to a low estimate still carries this much
STALE_ESTIMATE_S = 5.0  # an estimate this old is probed even when the probe holds a request back
# a probe sent while a request computes on the device gets this share of the device-only time as
# its deadline, so that it is done before the computation is (the head's spread); tuned on the
# tuning traces of experiments/bench_policies.py (0.6, 0.8, 1.0: 1.0300, 1.0297, 1.0319 x the oracle)
ALONGSIDE_PROBE_SHARE = 0.8
# below this a probe on a real link measures the pacer's and the socket's own overheads more than
# the link, and a given-up probe costs the connection: no probe beside a computation that short
MIN_ALONGSIDE_PROBE_S = 0.02


@dataclass
class RunEnv:
    """Everything one run needs, built by the run task; both runtimes take it.

    ``rtt_s``: the true round-trip time (the link's; None: the uplink trace's, else the latency
    model's). ``timeout_s``: an upload or answer taking longer is abandoned and the request falls
    back to the device. ``probe_timeout_s``: a probe's deadline (None: the device-only time).
    ``probes``: whether policies that read the rate estimate may probe. ``sim_options``: the
    simulator's ``noise`` and ``client_share`` (the latter also shapes the oracle's view of
    background clients on the real runtime), so that hindsight policies simulating the scenario
    in ``prepare`` see the same simulator."""

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
    probe_timeout_s: float | None = None
    probes: bool = True
    sim_options: dict[str, Any] = field(default_factory=dict)
    give_up: bool = True  # deadline-aware give-up of slow uploads (policies that read the estimate)

    def check(self) -> None:
        """Refuse an environment no run can use, in one sentence."""
        if not self.candidates:
            raise ConfigError("no candidate cuts to run; check the split plan and profiles.")
        if self.n_requests < 1:
            raise ConfigError(f"n_requests must be at least 1, got {self.n_requests}; set requests or runtime.n_requests.")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}; set link.max_transfer_s > 0.")
        if self.probe_timeout_s is not None and not self.probe_timeout_s > 0:
            raise ConfigError(f"probe_timeout_s must be positive, got {self.probe_timeout_s}.")

    def true_load(self) -> TrueLoad:
        return TrueLoad(self.load_model, self.candidates, float(self.sim_options.get("client_share", 0.5)))

    def probe_deadline_s(self) -> float:
        if self.probe_timeout_s is not None:
            return float(self.probe_timeout_s)
        return min(self.timeout_s, max(0.05, self.candidates[device_only_index(self.candidates)].head_at(1)))


# --- what a backend reports ----------------------------------------------------------------------

@dataclass(frozen=True)
class Transfer:
    """One upload: its frame bytes, when it started, and either the shaped time it took (one-way
    delay taken off) or, abandoned at its deadline, the shaped time it had and the bytes the link
    carried in it."""

    nbytes: int
    seconds: float
    t_start: float
    completed: bool = True
    carried_bytes: float | None = None  # abandoned: bytes through before the deadline

    @classmethod
    def abandoned(cls, nbytes: int, seconds: float, t_start: float, carried_bytes: float) -> Transfer:
        return cls(nbytes, seconds, t_start, completed=False, carried_bytes=carried_bytes)


@dataclass(frozen=True)
class ProbeJob:
    """A probe of ``nbytes`` of filler, given up ``deadline_s`` after it starts."""

    nbytes: int
    deadline_s: float


@dataclass(frozen=True)
class Job:
    """What the loop asks a backend to serve: request ``index`` at ``cut``; an upload or answer
    that takes longer than ``deadline_s`` is abandoned and the request finished on the device.
    ``probe`` (device-only cuts only): a probe to send while the device computes."""

    index: int
    cut: CutProfile
    deadline_s: float
    give_up: GiveUp | None = None  # abandon the upload earlier when the device would finish sooner
    answer_wait_s: float | None = None  # stop waiting for the answer this long after the upload
    probe: ProbeJob | None = None


@dataclass
class Served:
    """What serving one request took (seconds; the parts as in ``RequestRecord``) and brought."""

    t_done: float  # scenario time at which the answer was usable on the device
    device_s: float = 0.0
    connect_s: float = 0.0
    encode_s: float = 0.0
    uplink_s: float = 0.0
    decode_s: float = 0.0
    queue_s: float = 0.0
    server_s: float = 0.0
    overhead_s: float = 0.0
    downlink_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    failed: bool = False  # the exchange failed; the device finished the request
    report: ServerReport | None = None
    upload: Transfer | None = None
    prediction: int | None = None
    label: int | None = None
    probe: ProbeResult | None = None  # the job's probe; the backend's clock is past its end too


# What a backend measures of a request, copied into its RequestRecord under the same names.
SERVED_PARTS = ("connect_s", "device_s", "encode_s", "uplink_s", "decode_s", "queue_s", "server_s", "overhead_s",
                "downlink_s", "bytes_up", "bytes_down")


@dataclass(frozen=True)
class ProbeResult:
    t_done: float
    upload: Transfer
    report: ServerReport | None = None  # None: no answer within the deadline
    rtt_s: float | None = None


class Backend(Protocol):
    """Serves requests and probes on a clock; see the module docstring for the semantics."""

    def start(self) -> None:
        """Scenario time 0 is now (called once the policy is prepared, right before request 0)."""

    def now(self) -> float:
        """Scenario time now."""

    def wait_until(self, t: float) -> None:
        """Let scenario time reach ``t`` (at once when it already has)."""

    def has_input(self) -> bool:
        """True when there is another request to serve (a real device may run out of inputs)."""

    def reachable(self) -> bool:
        """False while the server is known to be unreachable (a back-off after a failed connection)."""

    def probe(self, nbytes: int, deadline_s: float) -> ProbeResult:
        """Send ``nbytes`` of filler and wait for the answer, at most ``deadline_s``."""

    def serve(self, job: Job) -> Served:
        """Serve one request now; a failed exchange is finished on the device. With ``job.probe``
        (a device-only request), send that probe while the device computes; return once both
        are done, with the request's own ``t_done``."""


@dataclass
class RunStats:
    probes: int = 0
    failed_probes: int = 0
    fallbacks: int = 0


@dataclass
class _Probe:
    t_start: float
    t_done: float


class RequestLoop:
    """One run of ``env`` on ``backend``; ``records`` grows as requests finish (readable after an
    interruption). ``initial_report`` is what the device knows of the server before the run."""

    def __init__(self, env: RunEnv, backend: Backend, initial_report: ServerReport | None = None) -> None:
        env.check()
        self.env, self.backend = env, backend
        self.candidates = env.candidates
        self.device_only = device_only_index(env.candidates)
        self.true_load = env.true_load()
        self.load = initial_report.as_load() if initial_report is not None else ServerLoad()
        self.in_flight = InFlight()
        self._abandoned = itertools.count()
        self.rtt_estimate_s: float | None = None
        self.last_probe_t = -math.inf
        self.probe_deadline_s = env.probe_deadline_s()
        self.probing = env.probes and env.policy.needs_rate_estimate
        self.records: list[RequestRecord] = []
        self.stats = RunStats()
        self.on_record: Callable[[RequestRecord], None] | None = None  # e.g. a progress bar
        self.next_due = 0.0
        self._prev_done = 0.0
        self._probe_overrun: _Probe | None = None  # a probe beside the last request that outlasted it
        self._arrival_rng = np.random.default_rng([env.seed, 1])

    def run(self) -> list[RequestRecord]:
        """Serve every request of the run; the records."""
        self.begin()
        while self.step():
            pass
        return self.records

    def begin(self) -> None:
        """Prepare the policy and estimator and start the backend's clock (request 0 is due at 0)."""
        env = self.env
        env.policy.prepare(env)
        env.estimator.reset()
        env.estimator.bind(env.uplink)
        self._arrival_rng = np.random.default_rng([env.seed, 1])
        self.backend.start()
        self.next_due, self._prev_done, self._probe_overrun = 0.0, 0.0, None

    def step(self) -> bool:
        """Serve the next request (due at ``next_due``); False when the run is over. Several loops
        stepped in order of ``next_due`` interleave devices in scenario time."""
        i = len(self.records)
        if i >= self.env.n_requests or not self.backend.has_input():
            return False
        t_due = self.next_due
        probe = self._maybe_probe(t_due) or self._probe_overrun
        self._probe_overrun = None
        self.backend.wait_until(t_due)
        record = self._request(i, t_due, self._prev_done, probe)
        self.records.append(record)
        self.env.policy.observe(record)
        if self.on_record is not None:
            self.on_record(record)
        self._prev_done = t_due + record.latency_s
        self.next_due = self.env.arrivals.next_start(t_due, self._prev_done, self._arrival_rng)
        return True

    # --- probing -----------------------------------------------------------------------------------
    def _maybe_probe(self, t_due: float) -> _Probe | None:
        estimator, backend = self.env.estimator, self.backend
        if not self.probing or not estimator.needs_probe(t_due):
            return None
        now = backend.now()
        if now - self.last_probe_t < estimator.max_age_s or not backend.reachable():
            return None
        if self._probe_would_hold_back(now, t_due):
            return None
        t_probe = max(now, t_due - self.probe_deadline_s)
        backend.wait_until(t_probe)
        self.last_probe_t = t_probe
        result = backend.probe(self._probe_bytes(t_probe, t_due), self.probe_deadline_s)
        self._learn_probe(result)
        return _Probe(t_probe, result.t_done)

    def _probe_alongside(self, t: float, cut: CutProfile) -> ProbeJob | None:
        """A probe to send while a request at ``cut`` computes on the device from ``t`` (the link
        is idle then), or None: only beside device-only requests, when the estimate will be stale
        by the time the computation ends, at most one per ``estimator.max_age_s``. Its deadline
        is ``ALONGSIDE_PROBE_SHARE`` of that computation, so it delays nothing; none when that is
        under ``MIN_ALONGSIDE_PROBE_S`` (a model that fast leaves no time to measure a real link).
        This is how a device kept busy on its own (a backlog, an outage) still sees the channel
        come back."""
        estimator = self.env.estimator
        if not (self.probing and cut.is_device_only) or t - self.last_probe_t < estimator.max_age_s:
            return None
        compute_s = cut.head_at(1)
        if not estimator.needs_probe(t + compute_s):
            return None
        deadline_s = min(self.probe_deadline_s, ALONGSIDE_PROBE_SHARE * compute_s)
        if deadline_s < MIN_ALONGSIDE_PROBE_S:
            return None
        self.last_probe_t = t
        return ProbeJob(self._probe_bytes(t, t + deadline_s), deadline_s)

    def _learn_probe(self, result: ProbeResult) -> None:
        """Count a probe and learn from it: the rate, the server's report and the RTT."""
        self.stats.probes += 1
        self._learn(result.upload, result.report, result.t_done)
        if result.report is None:
            self.stats.failed_probes += 1
        elif result.rtt_s is not None:
            old = self.rtt_estimate_s
            self.rtt_estimate_s = result.rtt_s if old is None else RTT_WEIGHT * result.rtt_s + (1 - RTT_WEIGHT) * old

    def _rate_estimate(self, t: float) -> float | None:
        """The estimator's rate at ``t``, capped by the uploads abandoned since one completed."""
        return capped(self.env.estimator.estimate(t), self.in_flight.cap_bps(t))

    def _probe_would_hold_back(self, now: float, t_due: float) -> bool:
        """Whether to skip a probe now because it would hold back the request due at ``t_due``:
        the device is free too late for even ``MIN_PROBE_BYTES`` to cross at the estimate and
        come back before the due time (or the request is already due). The probe beside the
        request, should it run on the device, or the request's own upload measures the link
        instead. Never without an estimate (an estimate of zero counts as none), nor once it is
        ``STALE_ESTIMATE_S`` old."""
        estimate = self._rate_estimate(now)
        age = self.env.estimator.age(now)
        if not estimate or age is None or age >= STALE_ESTIMATE_S:
            return False
        return t_due - now < self._smallest_probe_s(estimate)

    def _smallest_probe_s(self, estimate_bps: float) -> float:
        """How long ``MIN_PROBE_BYTES`` take to cross at ``estimate_bps`` and come back."""
        return 8 * MIN_PROBE_BYTES / max(estimate_bps, 1.0) + (self.rtt_estimate_s or 0.0)

    def _probe_bytes(self, t: float, t_due: float) -> int:
        """``estimator.probe_bytes``, fewer when the estimate says they would not cross within a
        quarter of the probe's deadline (a probe that times out measures little and holds
        requests back) or before the request due at ``t_due``: at least ``MIN_PROBE_BYTES``.
        Without an estimate (or with one of zero), ``MIN_PROBE_BYTES``: such a probe holds the
        request back for as long as it takes, at a rate nobody knows yet."""
        full = self.env.estimator.probe_bytes
        estimate = self._rate_estimate(t)
        if not estimate:
            return min(full, MIN_PROBE_BYTES)
        time_s = min(self.probe_deadline_s / 4, t_due - t - (self.rtt_estimate_s or 0.0))
        fits = int(estimate * time_s / 8)
        return max(min(full, MIN_PROBE_BYTES), min(full, fits))

    def _learn(self, upload: Transfer | None, report: ServerReport | None, t_known: float) -> None:
        """What an exchange taught the device: a completed upload measures the rate and clears
        the abandoned ones; an abandoned one measures what the link carried before its deadline
        and caps the rate until a transfer completes; an answer brings a report."""
        if upload is not None:
            if upload.completed:
                self.in_flight.clear()
                self.env.estimator.update(upload.nbytes, upload.seconds, t_known)
            elif upload.seconds > 0:
                self.env.estimator.update(upload.carried_bytes or 0.0, upload.seconds, t_known)
                self.in_flight.abandon(next(self._abandoned), upload.nbytes, upload.t_start,
                                       upload.t_start + upload.seconds)
        if report is not None:
            self.load = report.as_load()

    def _answer_was_late(self, waited_s: float) -> None:
        """No answer came within ``waited_s`` of a completed upload: until the next report, the
        server's side counts as taking at least that long (its queueing delay bounded from below),
        so the device does not keep offloading into a server or answer path it cannot see."""
        self.load = replace(self.load, queue_s=max(self.load.queue_s, waited_s))

    # --- one request -------------------------------------------------------------------------------
    def context(self, t: float) -> DecisionContext:
        estimator = self.env.estimator
        return DecisionContext(
            t=t, candidates=self.candidates, latency_model=self.env.latency_model,
            rate_estimate_bps=self._rate_estimate(t),
            rate_estimate_age_s=estimator.age(t), rtt_estimate_s=self.rtt_estimate_s, load=self.load,
            uplink=self.env.uplink, downlink=self.env.downlink, true_load=self.true_load.at(t),
            true_rtt_s=self.env.rtt_s,
        )

    def _gives_up(self, cut: CutProfile) -> bool:
        """Whether an exchange at ``cut`` may be given up early (see the module docstring)."""
        return self.env.give_up and self.env.policy.needs_rate_estimate and not cut.is_device_only

    def _give_up(self, cut: CutProfile, rate_estimate_bps: float | None) -> GiveUp | None:
        """The give-up rule of an upload at ``cut`` chosen with ``rate_estimate_bps`` (see the
        module docstring), or None when it does not apply."""
        if not self._gives_up(cut):
            return None
        rate = rate_estimate_bps or 0.0
        expected_s = 8.0 * self.env.latency_model.request_bytes(cut) / rate if rate > 0 else 0.0
        return GiveUp(after_s=GIVE_UP_SLACK * expected_s + GIVE_UP_MIN_S, device_rest_s=device_rest_s(self.candidates, cut))

    def _answer_wait(self, cut: CutProfile, predicted: LatencyBreakdown) -> float | None:
        """How long after its upload the device waits for the answer at ``cut`` before finishing
        the request alone, or None (the run's ``timeout_s`` only): see the module docstring."""
        if not self._gives_up(cut):
            return None
        expected_s = predicted.decode_s + predicted.queue_s + predicted.server_s + predicted.downlink_s + predicted.rtt_s
        if not math.isfinite(expected_s):
            return None
        extra_s = max(ANSWER_MIN_EXTRA_S, device_rest_s(self.candidates, cut))
        return min(self.env.timeout_s, ANSWER_SLACK * expected_s + extra_s)

    def _request(self, i: int, t_due: float, prev_done: float, probe: _Probe | None) -> RequestRecord:
        t_start = self.backend.now()
        ctx = self.context(t_start)
        reachable = self.backend.reachable()
        choice = self.env.policy.choose(ctx) if reachable else self.device_only
        cut = self.candidates[choice]
        predicted = self.env.latency_model.predict(cut, ctx.rate_estimate_bps, load=ctx.load,
                                                   rtt_s=ctx.rtt_estimate_s)
        served = self.backend.serve(Job(i, cut, self.env.timeout_s, self._give_up(cut, ctx.rate_estimate_bps),
                                        self._answer_wait(cut, predicted),
                                        self._probe_alongside(t_start, cut) if reachable else None))
        if served.probe is not None:
            self._learn_probe(served.probe)
            if served.probe.t_done > served.t_done:  # the link was busy beyond the request
                self._probe_overrun = _Probe(served.t_done, served.probe.t_done)
        self._learn(served.upload, served.report, served.t_done)
        if served.failed and served.upload is not None and served.upload.completed:
            self._answer_was_late(served.downlink_s)
        fallback = served.failed or not reachable
        self.stats.fallbacks += fallback
        latency = served.t_done - t_due
        wait = min(max(0.0, prev_done - t_due), t_start - t_due)
        held_from = max(t_due, prev_done, probe.t_start) if probe else t_start
        probe_s = max(0.0, min(probe.t_done, t_start) - held_from) if probe else 0.0
        record = RequestRecord(
            request=i, t_due=t_due, t_start=t_start, cut=cut.index, cut_name=cut.name, latency_s=latency,
            fallback=fallback, wait_s=wait, probe_s=probe_s, **{name: getattr(served, name) for name in SERVED_PARTS},
            rate_trace_bps=self.env.uplink.rate_at(t_start),
            rate_estimate_bps=math.nan if ctx.rate_estimate_bps is None else ctx.rate_estimate_bps,
            server_load=_server_load(served.report), prediction=served.prediction, label=served.label,
            **_predicted_fields(predicted),
        )
        record.unaccounted_s = latency - record.parts_s
        return record


def _server_load(report: ServerReport | None) -> float:
    if report is None:
        return math.nan
    return float(report.batch_size if report.batch_size > 1 else report.queue_len)


def _predicted_fields(predicted: LatencyBreakdown) -> dict[str, float]:
    total = predicted.total_s
    fields = {f"predicted_{k}": v for k, v in predicted.as_dict().items() if k != "total_s"}
    fields["predicted_latency_s"] = total if math.isfinite(total) else math.nan
    return fields


def run_requests(env: RunEnv, backend: Backend, initial_report: ServerReport | None = None,
                 stats: dict | None = None) -> list[RequestRecord]:
    """Run ``env`` on ``backend``: one :class:`RequestRecord` per request. ``stats``, when given,
    receives the counts of ``probes``, ``failed_probes`` and ``fallbacks``."""
    loop = RequestLoop(env, backend, initial_report)
    records = loop.run()
    if stats is not None:
        stats.update(vars(loop.stats))
    return records
