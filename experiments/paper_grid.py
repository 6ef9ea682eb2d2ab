"""The sweep of Bakhtiarnia et al. (ICASSP 2023): data rate x batch size, from measured profiles. Two modes.

``--paper`` (the paper's own question; see ``paper_mode.py``): a request is a batch of B images;
the device computes the head on all B, B tensors (or B images) cross the link, the server computes
the tail on B. EfficientNet-B0, ViT-B/32 and VGG-16 at 384 px, candidate cuts at block outputs
(``bottleneck=blocks``), rates 1..127 MB/s, a split "useful" when it is the plain argmin.

Default, the **server-batch mode** (a related question: what does load on a shared server do?): the
device computes one image and one tensor crosses; B is the number of requests the server computes
together, so only the server's tail grows with B. For each model and codec the candidate cuts
(full offloading "input", the natural bottlenecks of ``PaperRule`` over every graph node,
device-only "output") are profiled on this machine (``splitcomp.profile.get_profiles``: device
head at batch 1 with a device slowdown, server tail at several batch sizes; cached under
``outputs/profiles``), and ``LatencyModel.predict`` gives every option's latency on a grid of
uplink rates (1..7 Mbit/s for cellular links, then 1..127 MB/s) and server batch sizes 1..62
(between profiled sizes the tail time is interpolated linearly). Figures per model and codec:
``latency_vs_rate_*``, ``best_option_*`` (a split only when it leads by ``--margin``), ``gain_*``,
and ``split_wins.png``: the percentage of scenarios in which a split beats device-only and full
offloading by at least ``--margin`` (5%; without it, noise in the measured head times decides
between device-only and the split just before the classifier). ``summary.md``/``summary.csv``;
all of it logged to MLflow (experiment ``paper_grid``, run ``server_batch``).

Device: ``--slowdown 10`` makes the device head take 10x what one core of this machine needs. RTT 0
and the default frame overhead: the data rate is the only network term, as in the paper.

    python experiments/paper_grid.py --paper --quick    # the paper's setup, reduced (about 3 min)
    python experiments/paper_grid.py --quick            # server-batch mode, EfficientNet-Lite0 (~2.5 min)
    python experiments/paper_grid.py --out outputs/paper_grid   # server-batch: Lite0, EfficientNet-B0, ViT-B/16
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

import numpy as np
import pandas as pd
import torch
from grid_plots import (
    MBIT,
    MBYTE,
    GridAxes,
    best_option_map,
    end_options,
    gain_maps,
    latency_grid,
    latency_panels,
    save,
    share_bars,
    split_mask,
)

from splitcomp.configs import project_root
from splitcomp.link.codecs import Float16Codec, RawCodec
from splitcomp.profile import get_profiles
from splitcomp.profile.latency import Profiles, ServerLoad
from splitcomp.split import analyze
from splitcomp.track.report import markdown

ROOT = project_root()
SERVER_BATCH_AXES = GridAxes(np.array([r * MBIT for r in range(1, 8)] + [r * MBYTE for r in range(1, 128)]),
                             np.arange(1, 63), "server batch")


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


def server_batch(b: int) -> dict[str, Any]:
    """The server-batch scenario: one image per request, computed in a server batch of ``b``."""
    return {"load": ServerLoad(batch_size=b)}


def option_labels(profiles: Profiles) -> list[str]:
    def label(cut: Any) -> str:
        if cut.is_device_only:
            return "device only"
        if cut.is_full_offload:
            return "full offload"
        return f"split {cut.name.removeprefix('backbone_').lstrip('_')} ({cut.bytes_up / 1e3:.0f} kB)"

    return [label(c) for c in profiles.cuts]


def choice_grid(profiles: Profiles, grid: np.ndarray, margin: float) -> np.ndarray:
    """Index of the option to use at each (batch, rate): the fastest, except that a split must be
    ``margin`` faster than both device-only and full offloading (else the faster of those two)."""
    ends = ~split_mask(profiles)
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
    device, offload, split_best = end_options(profiles, grid)
    static = int(np.argmin(grid.mean(axis=(1, 2))))
    gain_vs_static = (grid[static] - best) / grid[static]
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
        "distinct_best_options": int(len(np.unique(grid.argmin(axis=0)))),
    }


# --- the experiment ------------------------------------------------------------------------------

def run(setup: Setup, out: Path, cache_dir: Path) -> tuple[pd.DataFrame, list[Path]]:
    rows, paths = [], []
    axes = SERVER_BATCH_AXES
    for name in setup.models:
        for codec in setup.codecs:
            started = time.perf_counter()
            profiles = measured_profiles(name, codec, setup, cache_dir)
            profile_s = time.perf_counter() - started
            grid = latency_grid(profiles, axes, server_batch)
            labels = option_labels(profiles)
            tag = f"{name}_{codec}"
            title = f"{name}, {codec} codec, device {setup.slowdown:g}x slower"
            margin_note = f"(a split counts when {100 * setup.margin:.0f}% faster than device-only and full offload)"
            paths.append(profiles.save(out / f"profiles_{tag}.json"))
            paths.append(save(latency_panels(profiles, grid, axes, labels, setup.profile_batches, title),
                              out / f"latency_vs_rate_{tag}.png"))
            paths.append(save(best_option_map(choice_grid(profiles, grid, setup.margin), axes, labels,
                                              f"best option: {title}\n{margin_note}"), out / f"best_option_{tag}.png"))
            paths.append(save(gain_maps(grid, axes, labels, f"gain of the best option: {title}"), out / f"gain_{tag}.png"))
            row = {"model": name, "codec": codec, **summarize_grid(profiles, grid, setup.margin), "profile_s": profile_s,
                   "profiles": "cached" if profiles.source != "measured" else "measured"}
            rows.append(row)
            print(f"{name:>16} {codec:>8}: split wins in {row['split_wins_pct']:5.1f}% of scenarios "
                  f"({row['split_cuts']} split cuts, profiles {row['profiles']} in {profile_s:.0f} s)", flush=True)
    summary = pd.DataFrame(rows)
    paths.append(save(share_bars([f"{m}\n{c}" for m, c in zip(summary["model"], summary["codec"])],
                                 list(summary["split_wins_pct"]),
                                 ["tab:blue" if c == "raw" else "tab:orange" for c in summary["codec"]],
                                 "scenarios where a split wins (%)",
                                 f"a split beats device-only and full offloading by {100 * setup.margin:.0f}% or more"),
                      out / "split_wins.png"))
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(summary.drop(columns=["profile_s"]), digits=1))
    paths += [out / "summary.csv", out / "summary.md"]
    return summary, paths


def log_to_mlflow(setup: Setup, summary: pd.DataFrame, paths: list[Path], uri: str | None, wall_s: float) -> str:
    axes = SERVER_BATCH_AXES
    params = {"mode": "server_batch", "models": ",".join(setup.models), "codecs": ",".join(setup.codecs),
              "device.slowdown": setup.slowdown, "server.device": setup.server_device,
              "profile.batch_sizes": setup.profile_batches, "profile.repeats": setup.repeats, "margin": setup.margin,
              "rates_mbit_s": f"{axes.rates_bps[0] / MBIT:g}..{axes.rates_bps[-1] / MBIT:g}",
              "batches": f"{axes.batches[0]}..{axes.batches[-1]}"}
    from splitcomp.track import start_run  # loads MLflow (the --paper mode can do without)

    with start_run(uri=uri, experiment="paper_grid", run_name="server_batch", params=params) as tracker:
        for _, row in summary.iterrows():
            tag = f"{row['model']}_{row['codec']}"
            tracker.log_metrics({f"split_wins_pct_{tag}": row["split_wins_pct"],
                                 f"gain_over_best_static_mean_pct_{tag}": row["gain_over_best_static_mean_pct"],
                                 f"device_only_ms_{tag}": row["device_only_ms"]})
        tracker.log_metrics({"wall_s": wall_s})
        for path in paths:
            tracker.log_artifact(path, "figures" if path.suffix == ".png" else None)
        return tracker.run_id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true",
                        help="the paper's setup: B images per request on device, link and server (paper_mode.py)")
    parser.add_argument("--quick", action="store_true", help="reduced: fewer models, batch sizes and repeats")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default outputs/paper_grid, or outputs/paper_grid_paper with --paper)")
    parser.add_argument("--slowdown", type=float, default=10.0, help="device head time x this (>= 1)")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="server-batch mode: a split wins a scenario when it is this much faster than both ends")
    parser.add_argument("--server-device", default="cpu",
                        help="torch device of the server (cpu, cuda, auto); with --paper the device is it too, slowed")
    parser.add_argument("--models", nargs="+", help="override the models of the mode")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "profiles",
                        help="server-batch mode: profile cache")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///outputs/mlflow.db)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-tracking", action="store_true",
                        help="--paper: log no MLflow runs (for a machine lent only to profile, without MLflow)")
    parser.add_argument("--image-size", type=int, default=None, help="--paper: image side (default 384)")
    parser.add_argument("--profile-batches", type=int, nargs="+", default=None,
                        help="--paper: batch sizes to time (others are interpolated)")
    parser.add_argument("--repetitions", type=int, default=3, help="--paper: independent profiles per model")
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[2.0, 3.0, 5.0],
                        help="--paper: other device slowdowns for the sensitivity table (same profiles)")
    parser.add_argument("--rate-scales", type=float, nargs="+", default=[10.0, 100.0],
                        help="--paper: also divide every rate by each of these (same profiles)")
    parser.add_argument("--profiles-from", type=Path, default=None,
                        help="--paper: reuse the segments_*.json of an earlier --out instead of measuring "
                             "(codec times are measured again)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.paper:
        import paper_mode

        paper_mode.main(args)
        return
    setup = quick_setup(args)
    if args.models:
        unknown = sorted(set(args.models) - set(MODELS))
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown} for the server-batch mode; choose from {sorted(MODELS)}")
        setup.models = args.models
    out = args.out or ROOT / "outputs" / "paper_grid"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary, paths = run(setup, out, args.cache_dir)
    wall_s = time.perf_counter() - started
    run_id = log_to_mlflow(setup, summary, paths, args.tracking_uri, wall_s)
    shown = ["model", "codec", "split_cuts", "smallest_split_kB", "device_only_ms", "split_wins_pct",
             "split_wins_any_margin_pct", "best_device_only_pct", "best_full_offload_pct",
             "gain_over_best_static_mean_pct", "heads_out_of_order"]
    print("\n" + summary[shown].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if args.json:
        args.json.write_text(json.dumps({"mode": "server_batch", "rows": summary.to_dict("records"), "wall_s": wall_s},
                                        indent=1))
    print(f"\n{len(paths)} files in {out} ({wall_s:.0f} s); MLflow run {run_id} in experiment paper_grid")


if __name__ == "__main__":
    main()
