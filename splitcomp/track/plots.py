"""Plots a person would rather look at than read, all in one place: a run's timeline and latency
CDFs, a sweep's latency per policy, a split plan's bytes and FLOPs per cut, and the profiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

if TYPE_CHECKING:  # for the annotations only: the sweep report draws without importing torch
    from splitcomp.profile.latency import Profiles
    from splitcomp.split.plan import SplitPlan


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


def pooled_cdf_figure(records: Mapping[str, Sequence[pd.DataFrame]]) -> Any:
    """Latency CDF per policy, pooled over a sweep's scenarios (one records table per job)."""
    pooled = {p: pd.concat(frames)[["latency_s"]].to_dict("records") for p, frames in sorted(records.items())}
    return cdf_figure(pooled)


def latency_bar_figure(table: pd.DataFrame) -> Any:
    """Mean latency (p95 as a thin marker) per scenario, one bar per policy."""
    scenarios = list(dict.fromkeys(table["scenario"]))
    policies = sorted(set(table["policy"]))
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(scenarios) * max(1, len(policies)) / 2 + 2), 4.5))
    for k, policy in enumerate(policies):
        sub = table[table["policy"] == policy].groupby("scenario")
        mean = sub["latency_ms_mean"].mean().reindex(scenarios)
        xs = np.arange(len(scenarios)) + (k - (len(policies) - 1) / 2) * width
        ax.bar(xs, mean.to_numpy(dtype=float), width, label=policy)
        if "latency_ms_p95" in table:
            p95 = sub["latency_ms_p95"].mean().reindex(scenarios)
            ax.plot(xs, p95.to_numpy(dtype=float), "k_", ms=8)
    ax.set_xticks(range(len(scenarios)), [s.replace(" ", "\n") for s in scenarios], fontsize="small")
    ax.set_ylabel("latency (ms): bar mean, dash p95")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_plan(plan: SplitPlan, title: str = "") -> Any:
    """Bytes crossing each cut (log scale) with the natural bottlenecks marked and the raw input size as a
    line, and the cumulative head MFLOPs on a second axis. Returns a matplotlib Figure (Agg backend)."""
    index = [cut.index for cut in plan.cuts]
    sizes = [max(cut.bytes, 1) for cut in plan.cuts]  # a cut only plain values cross would vanish on a log axis
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.step(index, sizes, where="mid", color="tab:blue", lw=1, label="bytes crossing")
    ax.axhline(plan.input_raw_bytes, color="gray", ls="--", lw=1, label="raw input")
    natural = plan.natural_bottlenecks
    ax.scatter([c.index for c in natural], [max(c.bytes, 1) for c in natural], color="tab:red", zorder=3,
               label="natural bottleneck")
    ax.set_yscale("log")
    ax.set_xlabel("cut index (graph order)")
    ax.set_ylabel(f"bytes crossing ({plan.codec.name or type(plan.codec).__name__})")
    flops_ax = ax.twinx()
    flops_ax.plot(index, [cut.head_flops / 1e6 for cut in plan.cuts], color="tab:green", lw=1.2,
                  label="head MFLOPs (cumulative)")
    flops_ax.set_ylabel("head MFLOPs")
    handles = ax.get_legend_handles_labels()[0] + flops_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(title or repr(plan), fontsize=9)
    fig.tight_layout()
    return fig


def plot_profiles(profiles: Profiles, path: Path) -> Path:
    """Head time, tail time per batch size and bytes per cut, one panel each."""
    names = profiles.names
    xs = range(len(names))
    fig, (ax_head, ax_tail, ax_bytes) = plt.subplots(3, 1, figsize=(max(6.0, 0.5 * len(names) + 3), 9), sharex=True)
    ax_head.bar(xs, [1e3 * c.head_at(1) for c in profiles.cuts], color="tab:blue")
    ax_head.set_ylabel("device head (ms)")
    for b in sorted(profiles.cuts[0].tail_s):
        ax_tail.plot(xs, [1e3 * c.tail_s.get(b, 0.0) for c in profiles.cuts], marker="o", label=f"batch {b}")
    ax_tail.set_ylabel("server tail (ms)")
    ax_tail.legend(fontsize="small")
    # device-only sends nothing: no bar (NaN) rather than a fake one on the log axis
    ax_bytes.bar(xs, [c.bytes_up or float("nan") for c in profiles.cuts], color="tab:green")
    ax_bytes.set_yscale("log")
    ax_bytes.set_ylabel("bytes up")
    ax_bytes.set_xticks(list(xs), names, rotation=60, ha="right", fontsize="small")
    fig.suptitle("profiles per candidate cut")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _save_and_log(tracker: Any, fig: Any, out_dir: Path, name: str) -> Path:
    path = save_figure(fig, Path(out_dir) / name)
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
