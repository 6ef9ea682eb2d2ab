"""Timing on the device and server sides: a controlled device slowdown, thread counts, core pinning,
and repeated measurements summarised as a median and a spread."""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from splitcomp.errors import ConfigError
from splitcomp.link.shaping import wait_until

T = TypeVar("T")

_SPIN_S = 5e-4  # the last half millisecond of a wait is spun: time.sleep overshoots by ~50-100 us


def precise_sleep(seconds: float) -> None:
    """Wait ``seconds`` with sub-millisecond accuracy (sleep, then spin the last bit)."""
    if seconds > 0:
        wait_until(time.perf_counter, time.perf_counter() + seconds, _SPIN_S)


def check_slowdown(slowdown: float) -> float:
    """A device slowdown factor must be a finite number >= 1 (the device can be made slower, not faster)."""
    slowdown = float(slowdown)
    if not (slowdown >= 1.0 and slowdown != float("inf")):
        raise ConfigError(f"device.slowdown is {slowdown}; set it to a number >= 1.0 (1.0 = no slowdown)")
    return slowdown


def work_clock() -> Callable[[], float]:
    """The clock that times the emulated device's own work: this thread's CPU time while torch
    computes on the calling thread alone (one intra-op thread, the device default), else wall
    time. CPU time leaves out the moments other processes hold the core, so a busy machine does
    not make the emulated device slower still (its waits are multiplied by the slowdown too)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def run_on_device(fn: Callable[..., T], *args: Any, slowdown: float = 1.0, **kwargs: Any) -> tuple[T, float, float]:
    """Run ``fn(*args, **kwargs)`` as the (slower) device would.

    The call's work is timed on :func:`work_clock` (``compute_s``), then the device waits until
    ``slowdown * compute_s`` has passed since the call began, so the device side takes ``slowdown``
    times what this machine's work needs. Returns ``(out, compute_s, dilated_s)``, where
    ``dilated_s`` is the wall time of compute plus wait as really elapsed.
    """
    slowdown = check_slowdown(slowdown)
    clock = work_clock()
    start, work_start = time.perf_counter(), clock()
    out = fn(*args, **kwargs)
    compute_s = clock() - work_start
    precise_sleep(start + slowdown * compute_s - time.perf_counter())
    return out, compute_s, time.perf_counter() - start


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous count after."""
    if threads is None:
        yield
        return
    threads = int(threads)
    if threads < 1:
        raise ConfigError(f"threads is {threads}; set device.threads / server.threads to a positive integer")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pin_to_cores(cores: list[int] | None) -> set[int] | None:
    """Pin this process (all its current threads; new ones inherit) to ``cores``.

    Returns the previous core set so the caller can restore it, or None when nothing was done
    (``cores`` is None/empty, or the platform has no ``sched_setaffinity``: a warning then).
    """
    if not cores:
        return None
    if not hasattr(os, "sched_setaffinity"):
        warnings.warn("core pinning is not supported on this platform; pin_cores is ignored", stacklevel=2)
        return None
    wanted = {int(c) for c in cores}
    available = os.cpu_count() or 1
    if any(c < 0 or c >= available for c in wanted):
        raise ConfigError(f"pin_cores {sorted(wanted)} names cores this machine lacks; use cores 0..{available - 1}")
    before = os.sched_getaffinity(0)
    try:
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:  # the thread ended meanwhile
                pass
    except OSError as exc:
        raise ConfigError(f"cannot pin to cores {sorted(wanted)} ({exc}); choose cores this process may use: "
                          f"{sorted(before)}") from None
    return before


@contextmanager
def pinned(cores: list[int] | None) -> Iterator[None]:
    """Run the block pinned to ``cores`` (no-op for None), restoring the previous affinity after."""
    before = pin_to_cores(cores)
    try:
        yield
    finally:
        if before is not None:
            pin_to_cores(sorted(before))


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer around it measures the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device | None = None,
            clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Times on ``clock`` (default: wall time) of ``repeats`` calls of ``fn`` after ``warmup``
    untimed ones (synchronising ``device``)."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"profile.repeats={repeats}, profile.warmup={warmup}; use repeats >= 1 and warmup >= 0")
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize(device)
        times.append(clock() - start)
    return times


def median_and_spread(times: list[float]) -> tuple[float, float]:
    """Median and interquartile range of a list of times (spread 0 for fewer than two samples)."""
    median = statistics.median(times)
    if len(times) < 2:
        return median, 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return median, q3 - q1
