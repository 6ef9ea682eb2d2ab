"""The paper's sweep (Bakhtiarnia et al., ICASSP 2023): data rate x server batch size, from measured profiles.

For each model and codec the candidate cuts (full offloading "input", the natural bottlenecks,
device-only "output") are profiled on this machine (``splitcomp.profile.get_profiles``: device head
at batch 1 with a device slowdown, server tail at several batch sizes; cached under
``outputs/profiles``). ``LatencyModel.predict`` then gives every option's end-to-end latency on a
grid of uplink rates (1..7 Mbit/s for cellular links, then 1..127 MB/s as in the paper) and server
batch sizes 1..62 (a request is computed in a batch of b; between profiled batch sizes the tail
time is interpolated linearly). Figures per model and codec:

* ``latency_vs_rate_<model>_<codec>.png``: latency against rate for every option, one small panel
  per profiled batch size;
* ``best_option_<model>_<codec>.png``: which option to use at each (rate, batch) (a split only
  when it leads by ``--margin``);
* ``gain_<model>_<codec>.png``: (T_static - T_best) / T_static for each static option;

and ``split_wins.png``: the percentage of (rate, batch) scenarios in which a split (neither
device-only nor full offloading) beats both by at least ``--margin`` (5%; without a margin, noise
in the measured head times decides between device-only and the split just before the classifier).
A summary table goes to ``summary.md``/``summary.csv``; all of it is logged to MLflow (experiment
``paper_grid``).

Device: ``--slowdown 10`` makes the device head take 10x what one core of this machine needs,
standing in for a Jetson-class end device against an edge server (one core here; a GPU when
``--server-device cuda``). RTT 0 and the default frame overhead: the data rate is the only network
term, as in the paper.

    python experiments/paper_grid.py --quick            # EfficientNet-Lite0, 3 batch sizes, ~2.5 min
    python experiments/paper_grid.py --out outputs/paper_grid   # Lite0, EfficientNet-B0, ViT-B/16
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from splitcomp.link.codecs import Float16Codec, RawCodec  # noqa: E402
from splitcomp.profile import get_profiles  # noqa: E402
from splitcomp.profile.latency import LatencyModel, Profiles, ServerLoad  # noqa: E402
from splitcomp.split import analyze  # noqa: E402
from splitcomp.track import start_run  # noqa: E402
from splitcomp.track.report import markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MBIT = 1e6  # bit/s
MBYTE = 8e6  # bit/s in one MB/s
RATES_BPS = np.array([r * MBIT for r in range(1, 8)] + [r * MBYTE for r in range(1, 128)])
BATCHES = np.arange(1, 63)


def _lite0() -> torch.nn.Module:
    from splitcomp.workload.models import lite0

    return lite0(weights="package")


def _torchvision(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from splitcomp.workload.models import torchvision_model

        return torchvision_model(name, weights=None)  # timing does not depend on the weights

    return build


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "lite0": _lite0,
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "vit_b_16": _torchvision("vit_b_16"),
}
CODECS = {"raw": RawCodec, "float16": Float16Codec}


@dataclass
class Setup:
    models: list[str]
    codecs: list[str]
    profile_batches: list[int]
    repeats: int
    slowdown: float
    server_device: str
    margin: float = 0.05
    image_size: int = 224


def quick_setup(args: argparse.Namespace) -> Setup:
    if args.quick:
        return Setup(["lite0"], ["raw", "float16"], [1, 8, 62], 3, args.slowdown, args.server_device, args.margin)
    return Setup(list(MODELS), ["raw", "float16"], [1, 2, 4, 8, 16, 32, 62], 5, args.slowdown, args.server_device,
                 args.margin)


# --- profiles and the latency grid ---------------------------------------------------------------

def measured_profiles(name: str, codec_name: str, setup: Setup, cache_dir: Path) -> Profiles:
    torch.manual_seed(0)  # random weights repeat, so the profile cache hits
    model = MODELS[name]().eval()
    example = torch.randint(0, 256, (1, 3, setup.image_size, setup.image_size), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    codec = CODECS[codec_name]()
    plan = analyze(model, example, codec=codec)
    return get_profiles(model, plan, example, codec, {"threads": 1, "slowdown": setup.slowdown},
                        {"threads": 1, "device": setup.server_device},
                        {"batch_sizes": setup.profile_batches, "warmup": 1, "repeats": setup.repeats,
                         "cache_dir": str(cache_dir)})


def latency_grid(profiles: Profiles, rates_bps: np.ndarray = RATES_BPS, batches: np.ndarray = BATCHES) -> np.ndarray:
    """Seconds, shape (options, batches, rates): ``LatencyModel.predict`` for every cut."""
    model = LatencyModel(profiles)
    grid = np.empty((len(profiles.cuts), len(batches), len(rates_bps)))
    for c, cut in enumerate(profiles.cuts):
        for i, b in enumerate(batches):
            load = ServerLoad(batch_size=int(b))
            grid[c, i] = [model.predict(cut, float(r), load=load).total_s for r in rates_bps]
    return grid


def option_labels(profiles: Profiles) -> list[str]:
    def label(cut: Any) -> str:
        if cut.is_device_only:
            return "device only"
        if cut.is_full_offload:
            return "full offload"
        return f"split {cut.name.removeprefix('backbone_').lstrip('_')} ({cut.bytes_up / 1e3:.0f} kB)"

    return [label(c) for c in profiles.cuts]


def split_mask(profiles: Profiles) -> np.ndarray:
    return np.array([not (c.is_device_only or c.is_full_offload) for c in profiles.cuts])


def choice_grid(profiles: Profiles, grid: np.ndarray, margin: float) -> np.ndarray:
    """Index of the option to use at each (batch, rate): the fastest, except that a split must be
    ``margin`` faster than both device-only and full offloading (else the faster of those two)."""
    ends = np.array([c.is_device_only or c.is_full_offload for c in profiles.cuts])
    end_idx = np.flatnonzero(ends)
    best_end = end_idx[grid[ends].argmin(axis=0)]
    argbest = grid.argmin(axis=0)
    split_ok = grid.min(axis=0) < (1 - margin) * grid[ends].min(axis=0)
    return np.where(split_ok, argbest, best_end)


def heads_out_of_order(profiles: Profiles) -> int:
    """Cuts whose measured head time is below the previous cut's: a deeper head does all the work
    of a shallower one, so each such cut is measurement noise (contention on a shared machine)."""
    heads = [c.head_at(1) for c in profiles.cuts]
    return sum(later < earlier for earlier, later in zip(heads, heads[1:]))


def summarize_grid(profiles: Profiles, grid: np.ndarray, margin: float = 0.05) -> dict[str, Any]:
    """Split-wins share (a split at least ``margin`` faster than both device-only and full
    offloading: measured times carry noise, and a split just before the classifier is otherwise
    a coin toss against device-only), which kind of option is best how often, and the gain of
    choosing per scenario over the best single static option."""
    best = grid.min(axis=0)
    splits = split_mask(profiles)
    device = grid[[c.is_device_only for c in profiles.cuts]].min(axis=0)
    offload = grid[[c.is_full_offload for c in profiles.cuts]].min(axis=0)
    split_best = grid[splits].min(axis=0) if splits.any() else np.full_like(best, np.inf)
    static = int(np.argmin(grid.mean(axis=(1, 2))))
    gain_vs_static = (grid[static] - best) / grid[static]
    argbest = grid.argmin(axis=0)
    return {
        "candidates": len(profiles.cuts),
        "split_cuts": int(splits.sum()),
        "smallest_split_kB": min((c.bytes_up for c, s in zip(profiles.cuts, splits) if s), default=0) / 1e3,
        "input_kB": profiles.cuts[0].bytes_up / 1e3,
        "device_only_ms": 1e3 * float(device[0, 0]),
        "split_wins_pct": 100.0 * float(np.mean(split_best < (1 - margin) * np.minimum(device, offload))),
        "split_wins_any_margin_pct": 100.0 * float(np.mean(split_best < np.minimum(device, offload))),
        "heads_out_of_order": heads_out_of_order(profiles),
        "best_device_only_pct": 100.0 * float(np.mean(device <= best)),
        "best_full_offload_pct": 100.0 * float(np.mean(offload <= best)),
        "best_static": option_labels(profiles)[static],
        "gain_over_best_static_mean_pct": 100.0 * float(gain_vs_static.mean()),
        "gain_over_best_static_max_pct": 100.0 * float(gain_vs_static.max()),
        "distinct_best_options": int(len(np.unique(argbest))),
    }


# --- figures -------------------------------------------------------------------------------------

def _rate_axis(ax: Any) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("uplink rate (Mbit/s)")


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    v = np.log(values) if log else values.astype(float)
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


def latency_panels(profiles: Profiles, grid: np.ndarray, panel_batches: list[int], title: str) -> Any:
    cols = min(4, len(panel_batches))
    rows = -(-len(panel_batches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.5 * rows + 1.1), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    labels = option_labels(profiles)
    for ax, b in zip(axes.flat, panel_batches):
        for c, label in enumerate(labels):
            ax.plot(RATES_BPS / MBIT, 1e3 * grid[c, b - 1], lw=1.3, label=label,
                    ls="--" if not split_mask(profiles)[c] else "-")
        ax.set_title(f"server batch {b}", fontsize="small")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        _rate_axis(ax)
    for ax in axes.flat[len(panel_batches):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("latency (ms)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)), fontsize="x-small",
               frameon=False)
    fig.suptitle(title, fontsize="medium")
    return fig


def best_option_map(profiles: Profiles, grid: np.ndarray, margin: float, title: str) -> Any:
    labels = option_labels(profiles)
    argbest = choice_grid(profiles, grid, margin)
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    ax.pcolormesh(_edges(RATES_BPS / MBIT, True), _edges(BATCHES, False), argbest,
                  cmap=ListedColormap(colors[: len(labels)]), vmin=-0.5, vmax=len(labels) - 0.5)
    _rate_axis(ax)
    ax.set_ylabel("server batch size")
    present = sorted(set(argbest.ravel().tolist()))
    fig.legend([Patch(color=colors[i]) for i in present], [labels[i] for i in present], fontsize="x-small",
               loc="outside lower center", ncol=2, frameon=False)
    ax.set_title(f"{title}\n(a split counts when {100 * margin:.0f}% faster than device-only and full offload)",
                 fontsize="small")
    return fig


def gain_maps(profiles: Profiles, grid: np.ndarray, title: str) -> Any:
    labels = option_labels(profiles)
    best = grid.min(axis=0)
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 1.0, 2.4 * rows + 0.5), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    mesh = None
    for ax, c in zip(axes.flat, range(len(labels))):
        gain = (grid[c] - best) / grid[c]
        mesh = ax.pcolormesh(_edges(RATES_BPS / MBIT, True), _edges(BATCHES, False), gain, cmap="magma_r",
                             vmin=0, vmax=1)
        ax.set_title(f"vs {labels[c]}", fontsize="x-small")
        _rate_axis(ax)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("server batch")
    fig.colorbar(mesh, ax=axes, shrink=0.9, label="(T_static - T_best) / T_static")
    fig.suptitle(title, fontsize="medium")
    return fig


def split_wins_figure(summary: pd.DataFrame, margin: float) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels = [f"{m}\n{c}" for m, c in zip(summary["model"], summary["codec"])]
    bars = ax.bar(labels, summary["split_wins_pct"], color=["tab:blue" if c == "raw" else "tab:orange"
                                                             for c in summary["codec"]])
    ax.bar_label(bars, fmt="%.1f%%", fontsize="small")
    ax.tick_params(axis="x", labelsize="small")
    ax.set_ylabel("scenarios where a split wins (%)")
    ax.set_ylim(0, max(10.0, float(summary["split_wins_pct"].max()) * 1.2))
    ax.set_title(f"a split beats device-only and full offloading by {100 * margin:.0f}% or more",
                 fontsize="medium")
    fig.tight_layout()
    return fig


def save(fig: Any, path: Path, dpi: int = 90) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# --- the experiment ------------------------------------------------------------------------------

def run(setup: Setup, out: Path, cache_dir: Path) -> tuple[pd.DataFrame, list[Path]]:
    rows, paths = [], []
    for name in setup.models:
        for codec in setup.codecs:
            started = time.perf_counter()
            profiles = measured_profiles(name, codec, setup, cache_dir)
            profile_s = time.perf_counter() - started
            grid = latency_grid(profiles)
            tag = f"{name}_{codec}"
            title = f"{name}, {codec} codec, device {setup.slowdown:g}x slower"
            paths.append(profiles.save(out / f"profiles_{tag}.json"))
            paths.append(save(latency_panels(profiles, grid, setup.profile_batches, title),
                              out / f"latency_vs_rate_{tag}.png"))
            paths.append(save(best_option_map(profiles, grid, setup.margin, f"best option: {title}"),
                              out / f"best_option_{tag}.png"))
            paths.append(save(gain_maps(profiles, grid, f"gain of the best option: {title}"), out / f"gain_{tag}.png"))
            row = {"model": name, "codec": codec, **summarize_grid(profiles, grid, setup.margin), "profile_s": profile_s,
                   "profiles": "cached" if profiles.source != "measured" else "measured"}
            rows.append(row)
            print(f"{name:>16} {codec:>8}: split wins in {row['split_wins_pct']:5.1f}% of scenarios "
                  f"({row['split_cuts']} split cuts, profiles {row['profiles']} in {profile_s:.0f} s)", flush=True)
    summary = pd.DataFrame(rows)
    paths.append(save(split_wins_figure(summary, setup.margin), out / "split_wins.png"))
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(summary.drop(columns=["profile_s"]), digits=1))
    paths += [out / "summary.csv", out / "summary.md"]
    return summary, paths


def log_to_mlflow(setup: Setup, summary: pd.DataFrame, paths: list[Path], uri: str | None, wall_s: float) -> str:
    params = {"models": ",".join(setup.models), "codecs": ",".join(setup.codecs), "device.slowdown": setup.slowdown,
              "server.device": setup.server_device, "profile.batch_sizes": setup.profile_batches,
              "profile.repeats": setup.repeats, "margin": setup.margin, "rates_mbit_s": f"{RATES_BPS[0] / MBIT:g}..{RATES_BPS[-1] / MBIT:g}",
              "batches": f"{BATCHES[0]}..{BATCHES[-1]}"}
    with start_run(uri=uri, experiment="paper_grid", run_name="paper_grid", params=params) as tracker:
        for _, row in summary.iterrows():
            tag = f"{row['model']}_{row['codec']}"
            tracker.log_metrics({f"split_wins_pct_{tag}": row["split_wins_pct"],
                                 f"gain_over_best_static_mean_pct_{tag}": row["gain_over_best_static_mean_pct"],
                                 f"device_only_ms_{tag}": row["device_only_ms"]})
        tracker.log_metrics({"wall_s": wall_s})
        for path in paths:
            tracker.log_artifact(path, "figures" if path.suffix == ".png" else None)
        return tracker.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="EfficientNet-Lite0 only, 3 profiled batch sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "paper_grid")
    parser.add_argument("--slowdown", type=float, default=10.0, help="device head time x this (>= 1)")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="a split wins a scenario when it is this much faster than both alternatives")
    parser.add_argument("--server-device", default="cpu", help="torch device of the server tail (cpu, cuda, auto)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="override the models of the mode")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "profiles")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///outputs/mlflow.db)")
    parser.add_argument("--json", type=Path, help="also write the summary rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    setup = quick_setup(args)
    if args.models:
        setup.models = args.models
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary, paths = run(setup, args.out, args.cache_dir)
    wall_s = time.perf_counter() - started
    run_id = log_to_mlflow(setup, summary, paths, args.tracking_uri, wall_s)
    shown = ["model", "codec", "split_cuts", "smallest_split_kB", "device_only_ms", "split_wins_pct",
             "split_wins_any_margin_pct", "best_device_only_pct", "best_full_offload_pct",
             "gain_over_best_static_mean_pct", "heads_out_of_order"]
    print("\n" + summary[shown].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if args.json:
        args.json.write_text(json.dumps({"rows": summary.to_dict("records"), "wall_s": wall_s}, indent=1))
    print(f"\n{len(paths)} files in {args.out} ({wall_s:.0f} s); MLflow run {run_id} in experiment paper_grid")


if __name__ == "__main__":
    main()
