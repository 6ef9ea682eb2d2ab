"""Dynamic batching for the edge server: requests of the same cut, from any device, run together.

A batch of one cut closes when its rows reach ``max_batch`` or when its oldest request has
waited ``max_wait_s`` (the rule of serving systems such as Triton and TorchServe). When several
cuts have a closed batch, the compute thread takes them in round-robin order of the cuts, so a
busy cut cannot starve a quiet one.

The values of a batch's requests are concatenated along the batch dimension; a plain integer
equal to a request's batch size (``x.size(0)`` carried across the cut) becomes the batch's size.
Requests whose other plain values differ cannot share a tail call and run in separate batches.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Job:
    """One request waiting for the tail: its cut, decoded values, rows and when it was queued."""

    cut_index: int
    values: tuple[Any, ...]
    t_scenario: float
    enqueued: float
    queue_len: int  # jobs waiting when it was queued
    rows: int = 1   # its batch size
    future: Future = field(default_factory=Future)


class BatchQueue:
    """Per-cut FIFO queues and the batching rule; thread-safe, one consumer (the compute thread)."""

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0 (got {max_batch}, {max_wait_s})")
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._queues: OrderedDict[int, deque[Job]] = OrderedDict()  # cut -> jobs; order = round robin
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = 0

    def qsize(self) -> int:
        """Jobs waiting now (not yet taken into a batch)."""
        return self._waiting

    def put(self, job: Job) -> None:
        with self._cond:
            self._queues.setdefault(job.cut_index, deque()).append(job)
            self._waiting += 1
            self._cond.notify()

    def close(self) -> None:
        """Wake the consumer: ``take`` returns None once the queues are empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self) -> list[Job] | None:
        """The next closed batch (one cut, oldest first), blocking until one closes; None once
        closed and drained."""
        with self._cond:
            while True:
                now = time.perf_counter()
                cut = self._ready_cut(now)
                if cut is not None:
                    return self._pop_batch(cut)
                if self._closed:
                    if self._waiting == 0:
                        return None
                    return self._pop_batch(next(iter(self._queues)))  # drain without waiting
                self._cond.wait(self._wait_for(now))

    # --- the rule -----------------------------------------------------------------------------
    def _rows(self, jobs: deque[Job]) -> int:
        return sum(job.rows for job in jobs)

    def _ready_cut(self, now: float) -> int | None:
        """The first cut in round-robin order whose batch is full or whose oldest job is due."""
        for cut, jobs in self._queues.items():
            if jobs and (self._rows(jobs) >= self.max_batch or now - jobs[0].enqueued >= self.max_wait_s):
                return cut
        return None

    def _wait_for(self, now: float) -> float | None:
        """Seconds until the earliest oldest job is due (None: nothing queued, wait for a put)."""
        oldest = [jobs[0].enqueued for jobs in self._queues.values() if jobs]
        if not oldest:
            return None
        return max(min(oldest) + self.max_wait_s - now, 1e-4)

    def _pop_batch(self, cut: int) -> list[Job]:
        jobs = self._queues[cut]
        batch, rows = [jobs.popleft()], 0
        rows = batch[0].rows
        while jobs and rows + jobs[0].rows <= self.max_batch and mergeable(batch[0], jobs[0]):
            rows += jobs[0].rows
            batch.append(jobs.popleft())
        self._waiting -= len(batch)
        self._queues.move_to_end(cut)  # served: the other cuts come first next time
        return batch


def _is_batch_count(value: Any, rows: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == rows


def mergeable(a: Job, b: Job) -> bool:
    """Whether two jobs of one cut can share a tail call: their plain values agree, apart from
    integers that count each one's rows."""
    for va, vb in zip(a.values, b.values):
        if isinstance(va, torch.Tensor):
            continue
        if not (va == vb or (_is_batch_count(va, a.rows) and _is_batch_count(vb, b.rows))):
            return False
    return True


def concatenate(jobs: Sequence[Job]) -> tuple[Any, ...]:
    """The batch's inputs: tensors concatenated, row counts summed, other plain values shared."""
    if len(jobs) == 1:
        return jobs[0].values
    rows = sum(job.rows for job in jobs)
    out = []
    for position, value in enumerate(jobs[0].values):
        if isinstance(value, torch.Tensor):
            out.append(torch.cat([job.values[position] for job in jobs]))
        elif _is_batch_count(value, jobs[0].rows):
            out.append(rows)
        else:
            out.append(value)
    return tuple(out)
