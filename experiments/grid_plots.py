"""The latency grid of ``paper_grid.py`` (every option's latency over data rate x batch size) and its
figures, shared by the script's two modes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from splitcomp.profile.latency import LatencyModel, Profiles  # noqa: E402

MBIT = 1e6  # bit/s
MBYTE = 8e6  # bit/s in one MB/s


@dataclass(frozen=True)
class GridAxes:
    """The scenarios of a sweep: uplink rates (bit/s) x batch sizes, and how to show them."""

    rates_bps: np.ndarray
    batches: np.ndarray
    batch_label: str  # what the batch axis means, e.g. "server batch size"
    rate_unit: str = "Mbit/s"

    @property
    def rate_scale(self) -> float:
        return MBYTE if self.rate_unit == "MB/s" else MBIT

    @property
    def rates(self) -> np.ndarray:
        """The rates in ``rate_unit``."""
        return self.rates_bps / self.rate_scale


def latency_grid(profiles: Profiles, axes: GridAxes, scenario: Callable[[int], dict[str, Any]]) -> np.ndarray:
    """Seconds, shape (options, batches, rates): ``LatencyModel.predict(cut, rate, **scenario(b))``.

    Transfers take exactly 8 bytes / rate, so each (option, batch) is predicted once, at the lowest
    rate, and its uplink and downlink terms are rescaled to every other rate."""
    model = LatencyModel(profiles)
    reference = float(axes.rates_bps.min())
    grid = np.empty((len(profiles.cuts), len(axes.batches), len(axes.rates_bps)))
    for c, cut in enumerate(profiles.cuts):
        for i, b in enumerate(axes.batches):
            p = model.predict(cut, reference, **scenario(int(b)))
            link_s = p.uplink_s + p.downlink_s
            grid[c, i] = (p.total_s - link_s) + link_s * (reference / axes.rates_bps)
    return grid


def split_mask(profiles: Profiles) -> np.ndarray:
    return np.array([not (c.is_device_only or c.is_full_offload) for c in profiles.cuts])


def end_options(profiles: Profiles, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device-only, full offloading, best split) latency over the grid; inf where there is no split."""
    device = grid[[c.is_device_only for c in profiles.cuts]].min(axis=0)
    offload = grid[[c.is_full_offload for c in profiles.cuts]].min(axis=0)
    splits = split_mask(profiles)
    best_split = grid[splits].min(axis=0) if splits.any() else np.full_like(device, np.inf)
    return device, offload, best_split


# --- figures -------------------------------------------------------------------------------------

def _rate_axis(ax: Any, axes: GridAxes, log: bool) -> None:
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"uplink rate ({axes.rate_unit})")


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    v = np.log(values) if log else values.astype(float)
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


def latency_panels(profiles: Profiles, grid: np.ndarray, axes: GridAxes, labels: Sequence[str],
                   panel_batches: Sequence[int], title: str, log_rate: bool = True) -> Any:
    """Every option's latency against the rate, one panel per batch size (splits solid, ends dashed)."""
    cols = min(4, len(panel_batches))
    rows = -(-len(panel_batches) // cols)
    fig, ax_grid = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.5 * rows + 1.3), sharex=True, sharey=True,
                                squeeze=False, layout="constrained")
    splits = split_mask(profiles)
    batches = list(axes.batches)
    for ax, b in zip(ax_grid.flat, panel_batches):
        for c, label in enumerate(labels):
            ax.plot(axes.rates, 1e3 * grid[c, batches.index(b)], lw=1.2, label=label, ls="-" if splits[c] else "--")
        ax.set_title(f"{axes.batch_label} {b}", fontsize="small")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        _rate_axis(ax, axes, log_rate)
    for ax in ax_grid.flat[len(panel_batches):]:
        ax.axis("off")
    for ax in ax_grid[:, 0]:
        ax.set_ylabel("latency (ms)")
    handles, names = ax_grid.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)), fontsize="x-small", frameon=False)
    fig.suptitle(title, fontsize="medium")
    return fig


def best_option_map(choice: np.ndarray, axes: GridAxes, labels: Sequence[str], title: str,
                    log_rate: bool = True) -> Any:
    """Which option ``choice`` (option index per (batch, rate)) picks at each scenario."""
    colors = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    ax.pcolormesh(_edges(axes.rates, log_rate), _edges(axes.batches, False), choice,
                  cmap=ListedColormap([colors[i % len(colors)] for i in range(len(labels))]),
                  vmin=-0.5, vmax=len(labels) - 0.5)
    _rate_axis(ax, axes, log_rate)
    ax.set_ylabel(axes.batch_label)
    present = sorted(set(choice.ravel().tolist()))
    fig.legend([Patch(color=colors[i % len(colors)]) for i in present], [labels[i] for i in present],
               fontsize="x-small", loc="outside lower center", ncol=2, frameon=False)
    ax.set_title(title, fontsize="small")
    return fig


def gain_options(profiles: Profiles, grid: np.ndarray, limit: int = 6) -> list[int]:
    """The options worth a gain map: device-only, full offloading, every option that is best
    somewhere, then evenly spaced other splits up to ``limit`` (a model may offer dozens)."""
    chosen = set(np.flatnonzero(~split_mask(profiles)).tolist()) | set(np.unique(grid.argmin(axis=0)).tolist())
    others = [i for i in np.flatnonzero(split_mask(profiles)).tolist() if i not in chosen]
    room = max(0, limit - len(chosen))
    if room and others:
        chosen |= {others[round(k * (len(others) - 1) / max(room - 1, 1))] for k in range(min(room, len(others)))}
    return sorted(chosen)


def gain_maps(grid: np.ndarray, axes: GridAxes, labels: Sequence[str], title: str, log_rate: bool = True,
              options: Sequence[int] | None = None) -> Any:
    """For each static option (all, or ``options``), (T_static - T_best) / T_static over the grid."""
    best = grid.min(axis=0)
    options = list(range(len(labels))) if options is None else list(options)
    cols = min(3, len(options))
    rows = -(-len(options) // cols)
    fig, ax_grid = plt.subplots(rows, cols, figsize=(2.8 * cols + 1.0, 2.4 * rows + 0.6), sharex=True, sharey=True,
                                squeeze=False, layout="constrained")
    mesh = None
    for ax, c in zip(ax_grid.flat, options):
        mesh = ax.pcolormesh(_edges(axes.rates, log_rate), _edges(axes.batches, False), (grid[c] - best) / grid[c],
                             cmap="magma_r", vmin=0, vmax=1)
        ax.set_title(f"vs {labels[c]}", fontsize="x-small")
        _rate_axis(ax, axes, log_rate)
    for ax in ax_grid.flat[len(options):]:
        ax.axis("off")
    for ax in ax_grid[:, 0]:
        ax.set_ylabel(axes.batch_label)
    fig.colorbar(mesh, ax=ax_grid, shrink=0.9, label="(T_static - T_best) / T_static")
    fig.suptitle(title, fontsize="medium")
    return fig


def share_bars(labels: Sequence[str], values: Sequence[float], colors: Sequence[str], ylabel: str, title: str,
               low: Sequence[float] | None = None, high: Sequence[float] | None = None) -> Any:
    """One bar per entry; ``low``/``high`` (optional) draw the spread as an error bar."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 1.5), 3.8))
    errors = None
    if low is not None and high is not None:
        errors = [np.subtract(values, low), np.subtract(high, values)]
    bars = ax.bar(labels, values, color=colors, yerr=errors, capsize=4 if errors is not None else 0)
    ax.bar_label(bars, fmt="%.1f%%", fontsize="small", padding=3)
    ax.tick_params(axis="x", labelsize="small")
    ax.set_ylabel(ylabel)
    top = max([10.0, *values, *(list(high) if high is not None else [])])
    ax.set_ylim(0, top * 1.25)
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def grouped_share_bars(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float], Sequence[float],
                                                                    Sequence[float]]], ylabel: str, title: str) -> Any:
    """Bars per group, one per series ``(name, values, low, high)``; whiskers from low to high."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 1.5), 4.0))
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    top = 10.0
    for k, (name, values, low, high) in enumerate(series):
        errors = [np.subtract(values, low), np.subtract(high, values)]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
        top = max(top, *high)
    ax.set_xticks(x, groups, fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.25)
    ax.legend(fontsize="small", frameon=False)
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def save(fig: Any, path: Path, dpi: int = 90) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
