"""Fleet figures: per device and over the fleet (latency mean/p95/p99, fallbacks, share of
requests per cut), the server's (throughput, batch sizes, queue and utilisation over time) and
the fairness figure ``worst_device_over_fleet_mean`` (the slowest device's mean latency over the
fleet's mean).

In MLflow one run holds a whole fleet experiment: scalar metrics are prefixed by the policy
(``dynamic/latency_ms_p95``), per-device figures are series whose step is the device's index
(``dynamic/device_latency_ms_mean``), so a thousand devices cost a handful of metric keys rather
than a thousand child runs, and the plots compare the policies side by side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitcomp.records import RequestRecord


@dataclass(frozen=True)
class BatchSpan:
    """One tail call of the server, on the fleet's time axis (seconds from its start)."""

    start: float
    seconds: float
    requests: int
    cut: int = -1  # the cut's index in the plan


@dataclass
class DeviceFigures:
    device: int
    requests: int
    latency_ms_mean: float
    latency_ms_p95: float
    latency_ms_p99: float
    fallbacks: int
    offloaded_share: float


@dataclass
class FleetFigures:
    devices: list[DeviceFigures]
    requests: int
    latency_ms_mean: float
    latency_ms_p95: float
    latency_ms_p99: float
    fallbacks: int
    worst_device_over_fleet_mean: float
    cut_share: dict[str, float]
    server_throughput_rps: float
    server_utilisation: float
    batch_size_mean: float
    batch_sizes: dict[int, int]

    def scalars(self) -> dict[str, float]:
        """The fleet's scalar metrics (names carry their unit)."""
        values = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        values.update({f"cut_share_{name}": share for name, share in self.cut_share.items()})
        return values


def _percentiles(latencies: np.ndarray) -> tuple[float, float, float]:
    if not len(latencies):
        return float("nan"), float("nan"), float("nan")
    return (1000 * float(latencies.mean()), 1000 * float(np.percentile(latencies, 95)),
            1000 * float(np.percentile(latencies, 99)))


def fleet_figures(records: Sequence[Sequence[RequestRecord]], batches: Sequence[BatchSpan] = (),
                  duration_s: float | None = None) -> FleetFigures:
    """The figures of one fleet run: ``records`` per device, ``batches`` the server's tail calls."""
    devices = []
    for i, device in enumerate(records):
        mean, p95, p99 = _percentiles(np.array([r.latency_s for r in device]))
        offloaded = sum(1 for r in device if r.bytes_up > 0)
        devices.append(DeviceFigures(i, len(device), mean, p95, p99, sum(r.fallback for r in device),
                                     offloaded / max(len(device), 1)))
    everything = [r for device in records for r in device]
    mean, p95, p99 = _percentiles(np.array([r.latency_s for r in everything]))
    cuts = Counter(r.cut_name for r in everything)
    if duration_s is None:
        duration_s = max((r.t_due + r.latency_s for r in everything), default=0.0)
    busy = sum(b.seconds for b in batches)
    sizes = Counter(b.requests for b in batches)
    served = sum(b.requests for b in batches)
    worst = max((d.latency_ms_mean for d in devices if d.requests), default=float("nan"))
    return FleetFigures(
        devices=devices, requests=len(everything), latency_ms_mean=mean, latency_ms_p95=p95, latency_ms_p99=p99,
        fallbacks=sum(d.fallbacks for d in devices), worst_device_over_fleet_mean=worst / mean if mean else float("nan"),
        cut_share={name: n / len(everything) for name, n in sorted(cuts.items())},
        server_throughput_rps=served / duration_s if duration_s > 0 else 0.0,
        server_utilisation=busy / duration_s if duration_s > 0 else 0.0,
        batch_size_mean=served / len(batches) if batches else 0.0, batch_sizes=dict(sorted(sizes.items())))


def server_timeline(batches: Sequence[BatchSpan], step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin start times, utilisation per bin, requests served per second per bin)."""
    if not batches:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    end = max(b.start + b.seconds for b in batches)
    edges = np.arange(0.0, end + step_s, step_s)
    busy = np.zeros(len(edges))
    served = np.zeros(len(edges))
    for b in batches:
        busy[int(b.start // step_s)] += b.seconds
        served[int(b.start // step_s)] += b.requests
    return edges, np.minimum(busy / step_s, 1.0), served / step_s


def log_fleet(tracker: Any, figures_by_policy: Mapping[str, FleetFigures],
              batches_by_policy: Mapping[str, Sequence[BatchSpan]], out_dir: Path, prefix: str = "") -> None:
    """Every policy's fleet figures into the one open MLflow run (see the module docstring), and
    the comparison plots."""
    for policy, figures in figures_by_policy.items():
        key = f"{prefix}{policy}"
        tracker.log_metrics({f"{key}/{name}": value for name, value in figures.scalars().items()})
        for d in figures.devices:
            tracker.log_metrics({f"{key}/device_latency_ms_mean": d.latency_ms_mean,
                                 f"{key}/device_latency_ms_p95": d.latency_ms_p95,
                                 f"{key}/device_fallbacks": d.fallbacks}, step=d.device)
        edges, utilisation, _ = server_timeline(batches_by_policy.get(policy, ()))
        for step, value in enumerate(utilisation):
            tracker.log_metrics({f"{key}/server_utilisation": float(value)}, step=step)
    from splitcomp.track.plots import fleet_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    figure = fleet_figure(figures_by_policy, {p: server_timeline(b) for p, b in batches_by_policy.items()})
    path = out_dir / f"{prefix.strip('/') or 'fleet'}_fleet.png"
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    tracker.log_artifact(path, "plots")
