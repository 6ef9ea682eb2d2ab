"""Server-load models: how busy the edge server is over scenario time.

The runtime uses them to load the real server and the simulator to predict its times. Every
model answers the same three questions at scenario time ``t`` (seconds):

* ``batch_at(t)``: the batch size a request is computed in (1 unless :class:`BatchLoad`);
* ``slowdown_at(t)``: the factor on the server's tail time (1.0 unless :class:`TraceLoad`);
* ``clients_at(t)``: background device clients sending requests (0 unless :class:`ClientsLoad`).

Schedules and series are step functions: each value holds from its time until the next one, the
last holds for the rest of the run, and before the first point the model's base value holds
(``batch_size``, ``clients``, slowdown 1.0). Bad config values raise :class:`ConfigError`; bad
series files raise :class:`TraceError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from splitcomp.errors import ConfigError, TraceError
from splitcomp.scenario.loaders import (
    TraceWarning,
    content_lines,
    is_number,
    numeric_table,
    read_text,
    resolve_path,
)
from splitcomp.scenario.trace import time_value_pairs


@runtime_checkable
class LoadModel(Protocol):
    """What a server-load model answers (the runtime, the simulator and hindsight policies ask).
    The models here derive from it and inherit its answers for no load; any object with these
    methods will do."""

    kind: str = "none"

    def batch_at(self, t: float) -> int:
        """Batch size a request at time ``t`` is computed in (the request and ``b - 1`` others)."""
        return 1

    def slowdown_at(self, t: float) -> float:
        """Factor (>= 1) on the server's tail time at time ``t``."""
        return 1.0

    def clients_at(self, t: float) -> int:
        """Background device clients sending requests at time ``t``."""
        return 0

    def max_clients(self) -> int:
        """The most background clients at any time (the real runtime starts that many)."""
        return 0

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for run parameters and reports."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


class NoLoad(LoadModel):
    """An idle server: batch 1, no slowdown, no other clients."""

    kind = "none"


class BatchLoad(LoadModel):
    """Each request is computed in a batch of ``b`` with ``b - 1`` other inputs.

    ``b`` is ``batch_size`` throughout, or follows ``schedule`` (``[[t_s, b], ...]``) or a file
    ``path`` with two columns ``t_s, b`` (comma or whitespace, optional header); ``batch_size``
    holds before the first point.
    """

    kind = "batch"

    def __init__(self, batch_size: int = 1, schedule: Iterable[Sequence[float]] | None = None, path: str | None = None):
        self.batch_size = _positive_int("server_load.batch_size", batch_size)
        if schedule is not None and path is not None:
            raise ConfigError("server_load: give either schedule or path for the batch sizes, not both")
        self.path = None if path is None else str(path)
        if path is not None:
            times, values = read_series(path, "batch size")
            if np.any(values < 1) or np.any(values != np.round(values)):
                raise TraceError(f"batch-size file {path} holds a value that is not an integer >= 1; fix the file")
        else:
            times, values = _schedule(schedule, "server_load.schedule")
            for b in values:
                _positive_int("a server_load.schedule batch size", b)
        self._series = _StepSeries(times, values.astype(int), self.batch_size)

    def batch_at(self, t: float) -> int:
        return int(self._series.at(t))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "batch_size": self.batch_size,
            "schedule_points": len(self._series.times),
            "max_batch": int(max(self.batch_size, *self._series.values, 1)),
            "path": self.path,
        }


class ClientsLoad(LoadModel):
    """``clients`` background devices send real requests to the server at the ``cut`` they use.

    With ``rate_hz`` each client waits an exponential gap of mean ``1 / rate_hz`` after each
    answer, drawn from a generator seeded by ``seed`` (open loop); with ``rate_hz: null`` each
    sends its next request as soon as the previous answer arrives (closed loop). ``schedule``
    (``[[t_s, n], ...]``) changes the number of clients over time. How the simulator and the
    oracle see their queueing: :class:`splitcomp.profile.queueing.TrueLoad`.
    """

    kind = "clients"

    def __init__(
        self,
        clients: int = 1,
        rate_hz: float | None = None,
        cut: str = "input",
        schedule: Iterable[Sequence[float]] | None = None,
        seed: int = 0,
    ):
        self.clients = _non_negative_int("server_load.clients", clients)
        if rate_hz is not None and not (np.isfinite(rate_hz) and rate_hz > 0):
            raise ConfigError(f"server_load.rate_hz must be positive or null (closed loop), got {rate_hz!r}")
        if not isinstance(cut, str) or not cut:
            raise ConfigError(f"server_load.cut must be a cut name such as 'input', got {cut!r}")
        self.rate_hz = None if rate_hz is None else float(rate_hz)
        self.cut = cut
        self.seed = int(seed)
        times, values = _schedule(schedule, "server_load.schedule")
        for n in values:
            _non_negative_int("a server_load.schedule client count", n)
        self._series = _StepSeries(times, values.astype(int), self.clients)

    @property
    def closed_loop(self) -> bool:
        """True when clients send back-to-back requests instead of at ``rate_hz``."""
        return self.rate_hz is None

    def clients_at(self, t: float) -> int:
        return int(self._series.at(t))

    def max_clients(self) -> int:
        return int(max([self.clients, *self._series.values]))

    def arrival_times(self, duration: float) -> np.ndarray:
        """Sorted times in [0, duration) of all background requests (open loop only), a Poisson
        process whose rate is ``clients_at(t) * rate_hz``; the same for the same ``seed``."""
        if self.rate_hz is None:
            raise ValueError("closed-loop clients have no arrival schedule; they send on every answer")
        rng = np.random.default_rng(self.seed)
        edges = np.concatenate([[0.0], self._series.times[(self._series.times > 0) & (self._series.times < duration)]])
        ends = np.append(edges[1:], duration)
        arrivals = []
        for a, b in zip(edges, ends, strict=True):
            count = rng.poisson(self.clients_at(a) * self.rate_hz * (b - a))
            arrivals.append(rng.uniform(a, b, count))
        return np.sort(np.concatenate(arrivals))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "clients": self.clients,
            "rate_hz": self.rate_hz,
            "cut": self.cut,
            "schedule_points": len(self._series.times),
            "seed": self.seed,
        }


class TraceLoad(LoadModel):
    """A recorded server slowdown series from a file with two columns ``t_s, slowdown``
    (comma or whitespace, optional header); slowdown >= 1 multiplies the tail time."""

    kind = "trace"

    def __init__(self, path: str):
        self.path = str(path)
        times, values = read_series(path, "slowdown")
        if np.any(values < 1):
            raise TraceError(f"slowdown file {path} holds a value below 1 ({values.min():g}); slowdowns must be >= 1")
        self._series = _StepSeries(times, values, 1.0)

    def slowdown_at(self, t: float) -> float:
        return float(self._series.at(t))

    def describe(self) -> dict[str, Any]:
        values = self._series.values
        return {"kind": self.kind, "path": self.path, "points": len(values), "max_slowdown": float(values.max())}


# --- helpers --------------------------------------------------------------------------------
class _StepSeries:
    """Piecewise-constant values over time; ``base`` before the first point."""

    def __init__(self, times: np.ndarray, values: np.ndarray, base: float):
        self.times, self.values, self.base = times, values, base

    def at(self, t: float) -> float:
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return self.base if i < 0 else self.values[i]


def _schedule(schedule: Iterable[Sequence[float]] | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A config schedule ``[[t_s, value], ...]`` as two arrays, validated."""
    if schedule is None:
        return np.empty(0), np.empty(0)
    times, values = time_value_pairs(schedule, what)
    _check_times(times, ConfigError, what)
    return times, values


def read_series(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A two-column ``t_s, value`` file (a non-numeric first line is a header) as two arrays."""
    file = resolve_path(path)
    lines = content_lines(read_text(file))
    if lines and not all(is_number(f) for f in lines[0].replace(",", " ").split()):
        lines = lines[1:]
    rows, bad = numeric_table("\n".join(lines), 2)
    if len(rows) == 0:
        raise TraceError(f"{what} file {file} has no valid 't_s, value' rows ({bad} malformed); fix the file")
    if bad:
        warnings.warn(f"{what} file {file}: skipped {bad} malformed rows", TraceWarning, stacklevel=3)
    _check_times(rows[:, 0], TraceError, f"{what} file {file}")
    return rows[:, 0], rows[:, 1]


def _check_times(times: np.ndarray, error: type[Exception], what: str) -> None:
    if np.any(times < 0) or np.any(np.diff(times) <= 0):
        raise error(f"{what}: times must be >= 0 and strictly increase, got {times[:8].tolist()}")


def _positive_int(what: str, value: Any) -> int:
    return _int_at_least(what, value, 1)


def _non_negative_int(what: str, value: Any) -> int:
    return _int_at_least(what, value, 0)


def _int_at_least(what: str, value: Any, low: int) -> int:
    try:
        ok = not isinstance(value, bool) and float(value).is_integer() and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)
