"""A fleet in the simulator: every device's request loop on one modelled batching server.

Each device is a :class:`~splitcomp.loop.RequestLoop` on its own :class:`FleetSimBackend`
(its own trace, arrivals, policy and estimator); the loops are stepped in order of their next
due time, so devices interleave in scenario time, and every request they offload is queued at
one :class:`BatchServerModel`.

The server model follows :class:`~splitcomp.runtime.batching.BatchQueue`: a request joins the
open batch of its cut if that batch has not started and holds fewer than ``max_batch``
requests; otherwise it opens a new one, which closes ``max_wait_s`` after its first request and
starts when it has closed and the server is free (so a busy server lets batches grow, as the
real queue does). A batch of ``n`` requests takes the profiled tail time at batch ``n``. With
``batching=False`` requests run one at a time in arrival order.

Its one approximation: a request's loop needs its answer when it is served, so a batch's
members see the batch as it stands when they join; a later member lengthens the batch (and
delays the batches behind it) without changing the times of those already answered.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from splitcomp.fleet.metrics import BatchSpan
from splitcomp.loop import RequestLoop, RunEnv
from splitcomp.profile.latency import CutProfile
from splitcomp.records import RequestRecord, ServerReport
from splitcomp.sim import SimBackend


@dataclass
class _Batch:
    cut: int
    closes: float  # no later request joins after this (or once full)
    start: float
    end: float
    size: int = 1


class BatchServerModel:
    """The shared edge server of a simulated fleet (see the module docstring)."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.005, batching: bool = True) -> None:
        self.max_batch = int(max_batch) if batching else 1
        self.max_wait_s = float(max_wait_s) if batching else 0.0
        self.free_at = 0.0
        self.open: dict[int, _Batch] = {}
        self.batches: list[_Batch] = []
        self._pending: list[tuple[float, int]] = []  # (start, size) of batches not yet started, a heap

    def submit(self, cut: CutProfile, t: float, server_f: float = 1.0) -> tuple[float, float, ServerReport]:
        """Queue a request of ``cut`` arriving at ``t``: (queue_s, server_s, report)."""
        batch = self.open.get(cut.index)
        if batch is not None and t <= batch.start and batch.size < self.max_batch:
            old = cut.tail_at(batch.size) * server_f
            batch.size += 1
            grown = cut.tail_at(batch.size) * server_f - old
            batch.end += grown
            self.free_at += grown
        else:
            closes = t + self.max_wait_s
            start = max(closes, self.free_at)
            batch = _Batch(cut.index, closes, start, start + cut.tail_at(1) * server_f)
            self.free_at = batch.end
            self.open[cut.index] = batch
            self.batches.append(batch)
        queue_s = batch.start - t
        server_s = batch.end - batch.start
        queued = self.queued_at(t)
        report = ServerReport(batch_size=batch.size, queue_len=queued, queue_s=queue_s, tail_s=server_s,
                              server_s=server_s, batch_requests=batch.size, queued_now=queued)
        return queue_s, server_s, report

    def queued_at(self, t: float) -> int:
        """Requests in batches that have not started by ``t`` (the recent ones only: the model
        keeps the open batch per cut)."""
        return sum(b.size for b in self.open.values() if b.start > t)

    def probe_report(self, t: float) -> ServerReport:
        """What a probe reaching the server at ``t`` learns: the wait until it is free."""
        queued = self.queued_at(t)
        return ServerReport(queue_len=queued, queue_s=max(0.0, self.free_at - t), queued_now=queued)

    def history(self) -> list[BatchSpan]:
        return [BatchSpan(b.start, b.end - b.start, b.size, b.cut) for b in self.batches]


class FleetSimBackend(SimBackend):
    """One device of a simulated fleet: its own link and compute, the fleet's shared server."""

    def __init__(self, env: RunEnv, server: BatchServerModel, noise: float | None = None,
                 device_factors: Sequence[float] = (), server_factors: Sequence[float] = ()) -> None:
        super().__init__(env, noise, device_factors, server_factors)
        self.server = server

    def _server_side(self, cut: CutProfile, t_send: float, t_queued: float,
                     server_f: float) -> tuple[float, float, ServerReport]:
        return self.server.submit(cut, t_queued, server_f)

    def _probe_report(self, t: float) -> ServerReport:
        return self.server.probe_report(t)


def simulate_fleet(envs: Sequence[RunEnv], server: BatchServerModel, noise: float | None = 0.0,
                   device_factors: Sequence[float] = (), server_factors: Sequence[float] = ()) -> list[list[RequestRecord]]:
    """Run every device's loop on the shared ``server``, interleaved by due time; each device's
    records, in the order of ``envs``. ``device_factors`` and ``server_factors``: ratios of real
    to profiled compute measured on the real runtime (see :class:`~splitcomp.sim.SimBackend`)."""
    loops = [RequestLoop(env, FleetSimBackend(env, server, noise, device_factors, server_factors)) for env in envs]
    due: list[tuple[float, int]] = []
    for i, loop in enumerate(loops):
        loop.begin()
        due.append((loop.next_due, i))
    heapq.heapify(due)
    while due:
        _, i = heapq.heappop(due)
        if loops[i].step():
            heapq.heappush(due, (loops[i].next_due, i))
    return [loop.records for loop in loops]
