"""The split-policy interface shared by the socket runtime and the simulator.

Before a run the request loop (:mod:`splitcomp.loop`) calls ``policy.prepare(env)`` once; then,
for every request, it builds a ``DecisionContext`` and calls ``policy.choose(ctx)``, which returns
an index into ``ctx.candidates``; after the request it calls ``policy.observe(record)`` with the
request's :class:`~splitcomp.records.RequestRecord`.

Online policies see only estimates: the rate estimate (with its age), an RTT estimate and the
load the server last reported. Hindsight policies (oracle, best_static) may also read the true
channel traces and the true server load, which the context carries for them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

from splitcomp.errors import ConfigError
from splitcomp.profile.latency import CutProfile, LatencyModel
from splitcomp.records import RequestRecord, ServerLoad
from splitcomp.scenario.load import LoadModel
from splitcomp.scenario.trace import Trace


@dataclass
class DecisionContext:
    """What a policy may look at when choosing the cut of one request."""

    t: float  # scenario time of the decision (the request's start), seconds
    candidates: list[CutProfile]
    latency_model: LatencyModel
    rate_estimate_bps: float | None = None  # uplink estimate; None before any measurement
    rate_estimate_age_s: float | None = None
    rtt_estimate_s: float | None = None  # None: the latency model's own RTT
    load: ServerLoad = field(default_factory=ServerLoad)  # last load the server reported
    # hindsight, for oracle-type policies only
    uplink: Trace | None = None
    downlink: Trace | None = None
    true_load: ServerLoad | None = None
    true_rtt_s: float | None = None  # None: the uplink trace's RTT, else the latency model's


class RunEnvironment(Protocol):
    """What a policy may read of a run before it starts (``prepare``): the scenario and the
    candidates. :class:`splitcomp.loop.RunEnv` is the one implementation (a dataclass, so hindsight
    policies may ``dataclasses.replace`` it to simulate variants)."""

    candidates: list[CutProfile]
    latency_model: LatencyModel
    policy: Policy
    uplink: Trace
    downlink: Trace | None
    load_model: LoadModel | None
    n_requests: int
    seed: int


class Policy(ABC):
    """Chooses a cut per request."""

    name = "policy"
    # True for policies that read ctx.rate_estimate_bps: only they make the device probe the link
    needs_rate_estimate = False

    def prepare(self, env: RunEnvironment) -> None:
        """Called once before a run with the run's environment (a ``splitcomp.loop.RunEnv``).

        Stateful policies reset their state here, so one object can serve several runs."""
        return None

    @abstractmethod
    def choose(self, ctx: DecisionContext) -> int:
        """Index into ``ctx.candidates`` of the cut to use for this request."""

    def observe(self, record: RequestRecord) -> None:
        """Learn from the record of a finished request (default: nothing)."""
        return None


def device_only_index(candidates: list[CutProfile]) -> int:
    """Index of the device-only candidate (the last one when none is flagged)."""
    for i, cut in enumerate(candidates):
        if cut.is_device_only:
            return i
    return len(candidates) - 1


def device_rest_s(candidates: list[CutProfile], cut: CutProfile) -> float:
    """What the device needs to finish a request at ``cut`` alone, its head already run: the
    device-only time less the head."""
    return max(0.0, candidates[device_only_index(candidates)].head_at(1) - cut.head_at(1))


def full_offload_index(candidates: list[CutProfile]) -> int:
    """Index of the full-offloading candidate (the first one when none is flagged)."""
    for i, cut in enumerate(candidates):
        if cut.is_full_offload:
            return i
    return 0


def resolve_cut(candidates: list[CutProfile], cut: str | int) -> int:
    """Index into ``candidates`` of a cut given by name, else by integer position."""
    names = [c.name for c in candidates]
    if str(cut) in names:
        return names.index(str(cut))
    try:
        index = int(cut)
    except (TypeError, ValueError):
        index = None
    if index is not None and -len(candidates) <= index < len(candidates):
        return index % len(candidates)
    raise ConfigError(
        f"unknown cut {cut!r}; use one of the candidate names {names} or an index below {len(candidates)}."
    )
