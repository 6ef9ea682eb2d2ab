"""A fleet in the simulator: every device's request loop on one modelled batching server.

Each device is a :class:`~splitcomp.loop.RequestLoop` on its own :class:`FleetSimBackend`
(its own trace, arrivals, policy and estimator); every request it offloads is queued at one
:class:`BatchServerModel`, which follows :class:`~splitcomp.runtime.batching.BatchQueue` and the
edge server's compute thread event by event: per-cut FIFO queues; a cut's batch is ready when it
holds ``max_batch`` requests or its oldest has waited ``max_wait_s``; a free server takes the
ready cuts in round-robin order; a batch of ``n`` requests takes the profiled tail time at batch
``n``, or the real server's time as calibrated (:mod:`splitcomp.fleet.calibration`); every
member gets its answer when the whole batch is done, with the report the real server sends (the
batch's size, the jobs queued ahead of it, its queueing delay, the jobs still queued), after the
answer's way back as calibrated; a probe learns the queue and the recent mean queueing delay, as
from the real server (which updates that mean only when a batch is done). With
``batching=False`` requests run one at a time in arrival order.

A request's answer depends on the requests that join its batch later, so the devices cannot
simply be stepped one request at a time. Each device's loop runs in its own thread, and an
:class:`EventClock` lets exactly one of them run at a time: a device runs freely through what
touches only itself (its head, its link) and hands the turn back whenever it reaches the shared
server (a request queued, a probe answered) at some scenario time; the clock then processes the
server's events and the devices' visits in scenario-time order. Every device's visits come in
increasing time, so processing the earliest pending one is always safe (a conservative
discrete-event simulation), and the result does not depend on the threads' scheduling.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from splitcomp.fleet.calibration import ServerTiming
from splitcomp.fleet.metrics import BatchSpan
from splitcomp.loop import Job, RequestLoop, RunEnv, Served
from splitcomp.profile.latency import CutProfile
from splitcomp.records import RequestRecord, ServerReport
from splitcomp.runtime.server import RECENT_QUEUE_WEIGHT
from splitcomp.sim import SimBackend

EPSILON_S = 1e-12  # float slack when comparing a job's wait with max_wait_s


class EventClock:
    """Scenario time shared by a simulated fleet (see the module docstring).

    ``at(t, action)`` schedules a server event; a device thread calls ``sleep_until(t, wake)``
    to continue once everything before ``t`` has happened, or ``block(wake)`` to wait for an
    event that will ``resume(t, wake)`` it. The thread that holds the turn processes the events
    itself until one resumes a device: itself (it just goes on) or another (it hands the turn
    over), so a visit costs at most one switch between threads."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None] | threading.Semaphore]] = []
        self._order = itertools.count()
        self._starting = True  # devices are still reaching their first visit, one after another
        self._turn = threading.Semaphore(0)  # while starting: the running device is at its first visit
        self._done = threading.Semaphore(0)  # every device has finished

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._order), action))

    def resume(self, t: float, wake: threading.Semaphore) -> None:
        heapq.heappush(self._events, (t, next(self._order), wake))

    def block(self, wake: threading.Semaphore) -> None:
        """(Device thread) wait until an event resumes this device."""
        if self._starting:
            self._turn.release()
            wake.acquire()
        else:
            self._pass_turn(wake)

    def sleep_until(self, t: float, wake: threading.Semaphore) -> None:
        """(Device thread) continue at scenario time ``t``, after everything earlier."""
        if not self._starting and (not self._events or t < self._events[0][0]):
            self.now = max(self.now, t)  # nothing happens before t: no need to hand over
            return
        self.resume(t, wake)
        self.block(wake)

    def _pass_turn(self, me: threading.Semaphore | None) -> None:
        """Process events in time order until one resumes a device; ``me``: the calling device,
        which waits for its own turn (None: the caller has finished)."""
        while self._events:
            t, _, event = heapq.heappop(self._events)
            self.now = max(self.now, t)
            if not isinstance(event, threading.Semaphore):
                event()
            elif event is me:
                return
            else:
                event.release()
                if me is not None:
                    me.acquire()
                return
        if me is not None:
            raise RuntimeError("a simulated device waits for an event that nothing scheduled")
        self._done.release()

    def run(self, bodies: Sequence[Callable[[], None]]) -> None:
        """Run each body in its own thread, one at a time, until all are done; events in time order.
        The first exception a body raised is raised here."""
        errors: list[BaseException] = []

        def thread(body: Callable[[], None]) -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread)
                errors.append(exc)
            finally:
                if self._starting:
                    self._turn.release()
                else:
                    self._pass_turn(None)

        for body in bodies:  # each runs until its first visit to the server (or its end)
            threading.Thread(target=thread, args=(body,), daemon=True).start()
            self._turn.acquire()
        self._starting = False
        self._pass_turn(None)
        self._done.acquire()
        if errors:
            raise errors[0]


@dataclass
class SimJob:
    """One request at the modelled server; ``report`` is set when its batch is done."""

    cut: CutProfile
    t_queued: float
    wake: threading.Semaphore | None = None  # the device waiting for the answer
    queue_len: int = 0
    queue_s: float = 0.0
    server_s: float = 0.0
    report: ServerReport | None = None


@dataclass
class _Batch:
    cut: int
    start: float
    seconds: float
    size: int


@dataclass
class BatchServerModel:
    """The shared edge server of a simulated fleet (see the module docstring)."""

    max_batch: int = 64
    max_wait_s: float = 0.005
    batching: bool = True
    timing: ServerTiming = field(default_factory=ServerTiming)
    seed: int = 0
    clock: EventClock = field(default_factory=EventClock)

    def __post_init__(self) -> None:
        if not self.batching:
            self.max_batch, self.max_wait_s = 1, 0.0
        self._queues: OrderedDict[int, deque[SimJob]] = OrderedDict()  # one FIFO per cut, round robin
        self._waiting = 0
        self._busy = False
        self._check_at: float | None = None  # the pending wake-up for a batch's max_wait
        self.recent_queue_s = 0.0
        self.batches: list[_Batch] = []
        self.rng = np.random.default_rng([self.seed, 0xBA7C])

    # --- what devices see ----------------------------------------------------------------------
    def arrive(self, job: SimJob) -> None:
        """Queue ``job`` at its ``t_queued`` (schedules the arrival; the caller then blocks)."""
        self.clock.at(job.t_queued, lambda: self._put(job))

    def probe_report(self) -> ServerReport:
        """What a probe arriving now learns (the real server's answer to a probe)."""
        return ServerReport(queue_len=self._waiting, queue_s=self.recent_queue_s, queued_now=self._waiting)

    def history(self) -> list[BatchSpan]:
        return [BatchSpan(b.start, b.seconds, b.size, b.cut) for b in self.batches]

    # --- events ----------------------------------------------------------------------------------
    def _put(self, job: SimJob) -> None:
        job.queue_len = self._waiting
        key = job.cut.index if self.batching else 0  # batching off: one FIFO over every cut
        self._queues.setdefault(key, deque()).append(job)
        self._waiting += 1
        self._try_start()

    def _try_start(self) -> None:
        if self._busy or not self._waiting:
            return
        now = self.clock.now
        for key, jobs in self._queues.items():
            if jobs and (len(jobs) >= self.max_batch or now - jobs[0].t_queued >= self.max_wait_s - EPSILON_S):
                self._start(key, now)
                return
        due = min(jobs[0].t_queued for jobs in self._queues.values() if jobs) + self.max_wait_s
        if self._check_at is None or due < self._check_at:
            self._check_at = due
            self.clock.at(due, self._check)

    def _check(self) -> None:
        """The wake-up for the oldest job's ``max_wait_s`` (a later one may still be pending)."""
        if self._check_at is not None and self._check_at <= self.clock.now:
            self._check_at = None
        self._try_start()

    def _start(self, key: int, now: float) -> None:
        jobs = self._queues[key]
        batch = [jobs.popleft() for _ in range(min(len(jobs), self.max_batch))]
        self._waiting -= len(batch)
        self._queues.move_to_end(key)  # served: the other cuts come first next time
        cut = batch[0].cut
        seconds = self.timing.batch_seconds(cut, len(batch), self.rng)
        self._busy = True
        self.batches.append(_Batch(cut.index, now, seconds, len(batch)))
        self.clock.at(now + seconds, lambda: self._finish(batch, now, seconds))

    def _finish(self, batch: list[SimJob], start: float, seconds: float) -> None:
        self._busy = False
        for job in batch:
            job.queue_s, job.server_s = start - job.t_queued, seconds
            self.recent_queue_s += RECENT_QUEUE_WEIGHT * (job.queue_s - self.recent_queue_s)
            job.report = ServerReport(batch_size=len(batch), queue_len=job.queue_len, queue_s=job.queue_s,
                                      tail_s=seconds, server_s=seconds, batch_requests=len(batch),
                                      queued_now=self._waiting)
            if job.wake is not None:
                self.clock.resume(self.clock.now, job.wake)
        self._try_start()


class FleetSimBackend(SimBackend):
    """One device of a simulated fleet: its own link and compute, the fleet's shared server."""

    def __init__(self, env: RunEnv, server: BatchServerModel, noise: float | None = None,
                 device_factors: Sequence[float] = ()) -> None:
        super().__init__(env, noise, device_factors)
        self.server = server
        self.wake = threading.Semaphore(0)
        self.answer_rng = np.random.default_rng([env.seed, 0xA45])

    def serve(self, job: Job) -> Served:
        """As the simulator serves, plus the calibrated excess of the real upload (which reaches
        the server that much later: see ``_server_side``) and the answer's way back after a
        batch of n."""
        served = super().serve(job)
        if served.report is not None and not served.failed:
            send = self.server.timing.send_extra_s
            extra = self.server.timing.answer_seconds(served.report.batch_requests, self.answer_rng)
            served = dataclasses.replace(served, t_done=served.t_done + extra, uplink_s=served.uplink_s + send,
                                         queue_s=served.queue_s - send, downlink_s=served.downlink_s + extra)
            self.t = served.t_done
        return served

    def _server_side(self, cut: CutProfile, t_send: float, t_queued: float,
                     server_f: float) -> tuple[float, float, ServerReport]:
        send = self.server.timing.send_extra_s
        job = SimJob(cut, t_queued + send, self.wake)
        self.server.arrive(job)
        self.server.clock.block(self.wake)
        assert job.report is not None
        return job.queue_s + send, job.server_s, job.report  # serve() moves ``send`` to the uplink

    def _probe_report(self, t: float) -> ServerReport:
        self.server.clock.sleep_until(t, self.wake)
        return self.server.probe_report()


def simulate_fleet(envs: Sequence[RunEnv], server: BatchServerModel, noise: float | None = 0.0,
                   device_factors: Sequence[float] = ()) -> list[list[RequestRecord]]:
    """Run every device's loop on the shared ``server``; each device's records, in the order of
    ``envs``. ``device_factors``: ratios of real to profiled head times measured on the real
    runtime (see :class:`~splitcomp.sim.SimBackend`); the server's own are ``server.factors``."""
    loops = [RequestLoop(env, FleetSimBackend(env, server, noise, device_factors)) for env in envs]
    server.clock.run([loop.run for loop in loops])
    return [loop.records for loop in loops]
