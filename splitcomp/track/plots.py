"""Plots a person would rather look at than read: the run's timeline and latency CDFs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def timeline_figure(records: Sequence[Mapping[str, Any]], uplink: Any = None) -> Any:
    """Three stacked panels over scenario time (each request at its due time): the channel rate
    (trace and the device's estimate), the chosen cut, and predicted vs measured latency."""
    t = np.array([r["t_due"] if "t_due" in r else r["t_start"] for r in records])
    fig, (ax_rate, ax_cut, ax_lat) = plt.subplots(3, 1, sharex=True, figsize=(9, 7))
    if uplink is not None and len(t):
        grid = np.linspace(0, max(t.max(), 1e-3), 500)
        ax_rate.step(grid, [uplink.rate_at(x) / 1e6 for x in grid], where="post", label="trace", color="0.5")
    ax_rate.plot(t, [r["rate_estimate_bps"] / 1e6 for r in records], ".", label="estimate", ms=4)
    ax_rate.set_ylabel("rate (Mbit/s)")
    ax_rate.legend(loc="upper right")
    names = [str(r["cut_name"]) for r in records]
    order = sorted(set(names), key=lambda n: min(r["cut"] for r in records if str(r["cut_name"]) == n))
    ax_cut.plot(t, [order.index(n) for n in names], "o", ms=4)
    ax_cut.set_yticks(range(len(order)), order)
    ax_cut.set_ylabel("chosen cut")
    ax_lat.plot(t, [1000 * r["latency_s"] for r in records], ".", label="measured", ms=4)
    ax_lat.plot(t, [1000 * r["predicted_latency_s"] for r in records], "x", label="predicted", ms=4)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_xlabel("scenario time (s)")
    ax_lat.legend(loc="upper right")
    fig.tight_layout()
    return fig


def cdf_figure(records_by_policy: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """Empirical latency CDF, one line per policy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in records_by_policy.items():
        latency = np.sort([1000 * r["latency_s"] for r in records])
        ax.step(latency, np.arange(1, len(latency) + 1) / max(len(latency), 1), where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save_and_log(tracker: Any, fig: Any, out_dir: Path, name: str) -> Path:
    path = Path(out_dir) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    tracker.log_artifact(path, "plots")
    return path


def log_run_plots(tracker: Any, records: Sequence[Mapping[str, Any]], uplink: Any, out_dir: Path) -> Path | None:
    if not records:
        return None
    return _save_and_log(tracker, timeline_figure(records, uplink), out_dir, "timeline.png")


def log_latency_cdf(tracker: Any, records_by_policy: Mapping[str, Sequence[Mapping[str, Any]]],
                    out_dir: Path) -> Path:
    return _save_and_log(tracker, cdf_figure(records_by_policy), out_dir, "latency_cdf.png")


def fleet_figure(figures_by_policy: Mapping[str, Any], timelines: Mapping[str, tuple]) -> Any:
    """Four panels comparing policies on a fleet: each device's mean latency (sorted), the
    server's batch-size distribution, and its utilisation and throughput over time."""
    fig, ((ax_dev, ax_batch), (ax_util, ax_rate)) = plt.subplots(2, 2, figsize=(11, 7))
    for name, figures in figures_by_policy.items():
        means = sorted(d.latency_ms_mean for d in figures.devices)
        ax_dev.plot(range(len(means)), means, label=f"{name} (worst/mean {figures.worst_device_over_fleet_mean:.2f})")
        sizes = figures.batch_sizes
        if sizes:
            ax_batch.plot(list(sizes), list(sizes.values()), "o-", label=name, ms=3)
        edges, utilisation, rate = timelines.get(name, (np.zeros(0),) * 3)
        ax_util.plot(edges, utilisation, label=name)
        ax_rate.plot(edges, rate, label=name)
    ax_dev.set_xlabel("device (sorted)")
    ax_dev.set_ylabel("mean latency (ms)")
    ax_batch.set_xlabel("requests per batch")
    ax_batch.set_ylabel("batches")
    ax_batch.set_yscale("log")
    ax_util.set_xlabel("time (s)")
    ax_util.set_ylabel("server utilisation")
    ax_rate.set_xlabel("time (s)")
    ax_rate.set_ylabel("requests served per s")
    for ax in (ax_dev, ax_batch, ax_util, ax_rate):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
