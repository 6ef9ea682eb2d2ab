"""``paper_grid.py --paper``: the experiment of Bakhtiarnia et al. (ICASSP 2023) as the authors set it up.

* **Batch semantics.** A request is a batch of B images: the device computes the head on all B, B
  intermediate tensors (or B uint8 images) cross the link, the server computes the tail on B
  (``LatencyModel.predict(..., batch=B)``). B = 1..62, rates 1..127 MB/s (megabytes), RTT 0.
* **Models.** EfficientNet-B0, ViT-B/32 and VGG-16 from torchvision at 384 px, with random
  weights: the pretrained ones need the internet, and the timing does not depend on the weights.
* **Candidates.** Full offloading, the natural bottlenecks among block outputs
  (``splitcomp.split.BlockOutputsRule``, ``bottleneck=blocks``: compression, tensor elements over
  the input's elements as the paper counts them, below 1) and device-only. A split is *useful* in a
  scenario when it is the plain argmin over these options (no margin).
* **Hardware.** The server is ``--server-device`` (one CPU thread by default) and the device is the
  same hardware ``--slowdown`` times slower, standing in for the paper's GPU server and the same
  GPU clock-locked to 300 MHz. On a GPU every grid batch size is timed, with more passes after a
  longer warm-up (a pass takes milliseconds there). Without a GPU everything runs on this machine's
  CPU, and the output says so.
* **Noise.** One segment profile per model and repetition (``splitcomp.profile.segments``: every
  candidate timed in one pass per batch size, batch sizes interleaved, more passes while the
  interquartile range is wide, each stretch's fastest pass kept: the hardware's uncontended time),
  shared by the codecs (a codec changes only the bytes and the codec times) and by every device
  slowdown (which scales the head times only). Each share is the median and range over
  ``--repetitions`` (3) independent profiles; the figures use the repetition with the median share.
* **Sensitivity.** The useful-split share is also computed for other device slowdowns
  (``--slowdowns``) and with every rate divided by each of ``--rate-scales`` (a platform whose
  compute is k times slower than the paper's sees the link as k times faster), from the same profiles.

Outputs in ``--out``: per model and codec ``latency_vs_rate_*.png`` (every option against the rate
at B = 1, 8, 32, 62), ``best_option_*.png`` (the argmin over rate x batch) and ``gain_*.png`` (for
each static option, what choosing per scenario saves); ``useful_splits.png`` (the share of
scenarios in which a split is useful, with its spread), ``bottlenecks.md`` (natural bottlenecks and
their compression), ``summary.md``/``.csv``, ``sensitivity.md``, ``results.json``,
``segments_*.json`` (reload them with ``--profiles-from``) and ``profiles_*.json``; one MLflow run per
model (experiment ``paper_grid``). ``--json PATH``: per model (keyed by its torchvision name) the
natural bottlenecks and the useful-split share with its spread, and a top-level ``targets`` list.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from grid_plots import (
    MBYTE,
    GridAxes,
    best_option_map,
    end_options,
    gain_maps,
    gain_options,
    grouped_share_bars,
    latency_grid,
    latency_panels,
    save,
)
from torch import nn

from splitcomp.configs import project_root, source_commit
from splitcomp.link.codecs import Float16Codec, RawCodec
from splitcomp.profile.cache import cpu_kind
from splitcomp.profile.latency import Profiles
from splitcomp.profile.segments import (
    SegmentProfile,
    crossing_values,
    cut_profiles,
    scale_heads,
    split_agreement,
    time_segments,
)
from splitcomp.split import BlockOutputsRule, SplitPlan, analyze
from splitcomp.track.report import markdown

ROOT = project_root()
PAPER_MODELS = ("efficientnet_b0", "vit_b_32", "vgg16")
BATCHES = np.arange(1, 63)
PANEL_BATCHES = (1, 8, 32, 62)
CODECS = {"raw": RawCodec, "float16": Float16Codec}
PRIMARY_CODEC = "raw"  # float32 tensors, as the paper sends them
QUICK_WALL_S = 600.0


def paper_axes(rate_scale: float = 1.0) -> GridAxes:
    """1..127 MB/s (divided by ``rate_scale``) x batches of 1..62 images."""
    return GridAxes(np.arange(1, 128) * MBYTE / rate_scale, BATCHES, "batch", rate_unit="MB/s")


AXES = paper_axes()


@dataclass
class PaperSetup:
    models: list[str]
    image_size: int
    profile_batches: list[int]
    repeats: int
    max_repeats: int
    repetitions: int
    slowdown: float
    server_device: torch.device
    quick: bool
    other_slowdowns: list[float] = field(default_factory=list)
    rate_scales: list[float] = field(default_factory=list)
    profiles_from: Path | None = None  # reuse saved segment profiles instead of measuring
    codecs: list[str] = field(default_factory=lambda: list(CODECS))
    max_rel_iqr: float = 0.05
    check_rounds: int = 5
    threads: int = 1
    warmup: int = 1  # untimed passes per batch size before the timed ones

    @property
    def hardware(self) -> str:
        if self.server_device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.server_device)}"
        return f"cpu:{cpu_kind()}, {self.threads} thread(s)"

    @property
    def where(self) -> str:
        return "GPU" if self.server_device.type == "cuda" else "CPU"


def setup_from(args: argparse.Namespace) -> PaperSetup:
    name = args.server_device if args.server_device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--server-device {args.server_device} but CUDA is not available here; use cpu or auto")
    unknown = sorted(set(args.models or []) - set(PAPER_MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown} for --paper; choose from {list(PAPER_MODELS)}")
    if args.repetitions < 1:
        raise SystemExit(f"--repetitions {args.repetitions}; use 1 or more (3 gives a spread)")
    quick = {"profile_batches": [1, 4], "repeats": 3, "max_repeats": 4, "check_rounds": 3}
    full = {"profile_batches": [1, 2, 4, 8], "repeats": 5, "max_repeats": 9, "check_rounds": 5}
    # a GPU pass takes milliseconds: it affords many, after a warm-up that lets the kernels'
    # first-call costs pass; its time grows far less than linearly with the batch, so the batch
    # sizes of the grid are timed rather than interpolated from small ones
    gpu = {"profile_batches": [1, 2, 4, 8, 16, 32, 62], "repeats": 20, "max_repeats": 60, "check_rounds": 30,
           "warmup": 10}
    options = gpu if device.type == "cuda" else quick if args.quick else full
    if args.profile_batches:
        options["profile_batches"] = sorted(set(args.profile_batches))
    return PaperSetup(models=list(args.models or PAPER_MODELS), image_size=args.image_size or 384,
                      repetitions=args.repetitions, slowdown=args.slowdown, server_device=device, quick=args.quick,
                      other_slowdowns=sorted(set(args.slowdowns or []) - {args.slowdown}),
                      rate_scales=sorted(set(args.rate_scales or []) - {1.0}), profiles_from=args.profiles_from,
                      **options)


def paper_batch(b: int) -> dict[str, Any]:
    """The paper's scenario: a request of ``b`` images, on the device, on the link and on the server."""
    return {"batch": b}


# --- one model: plan, candidates, profiles -------------------------------------------------------

def build_model(name: str, image_size: int) -> nn.Module:
    from splitcomp.workload.models import torchvision_model

    torch.manual_seed(0)
    return torchvision_model(name, weights=None, image_size=image_size).eval()


def block_label(cut: Any, blocks: set[str]) -> str:
    """The outermost block a cut closes (``features.3``), else the node it follows."""
    for path in cut.ends_modules:
        if path in blocks:
            return path.removeprefix("backbone.")
    return cut.name


def option_labels(plan: SplitPlan, blocks: set[str]) -> list[str]:
    def label(cut: Any) -> str:
        if cut.index == plan.cuts[-1].index:
            return "device only"
        if cut.index == 0:
            return "full offload"
        return f"{block_label(cut, blocks)} ({cut.elements / plan.cuts[0].elements:.2f})"

    return [label(c) for c in plan.candidates]


def bottleneck_rows(name: str, plan: SplitPlan, blocks: set[str], crossings: list[tuple[Any, ...]]) -> list[dict]:
    """The natural bottlenecks with their compression (elements, as the paper counts) and bytes per codec."""
    rows = []
    positions = {c.index: i for i, c in enumerate(plan.candidates)}
    for cut in plan.natural_bottlenecks:
        values = crossings[positions[cut.index]]
        row = {"model": name, "block": block_label(cut, blocks), "cut": cut.name, "elements": cut.elements,
               "compression": cut.elements / plan.cuts[0].elements,
               "head_flops_share": cut.head_flops / max(plan.total_flops, 1)}
        for codec_name, codec in CODECS.items():
            row[f"{codec_name}_kB"] = sum(codec().encode(v).nbytes for v in values if torch.is_tensor(v)) / 1e3
        rows.append(row)
    return rows


def check_segments(plan: SplitPlan, example: torch.Tensor, setup: PaperSetup) -> dict[str, Any]:
    """Segment timing against the real head and tail of one split (the natural bottleneck nearest
    half the FLOPs), measured in alternation at batch 1: an independent check of the profile."""
    if not plan.natural_bottlenecks:
        return {"cut": None, "error_pct": 0.0}
    cut = min(plan.natural_bottlenecks, key=lambda c: abs(c.head_flops - plan.total_flops / 2))
    agreement = split_agreement(plan, plan.candidates, cut, example, setup.server_device, setup.threads,
                                rounds=setup.check_rounds)
    return {**asdict(agreement), "error_pct": agreement.error_pct}


def segment_profiles(name: str, plan: SplitPlan, example: torch.Tensor, setup: PaperSetup) -> list[SegmentProfile]:
    """``setup.repetitions`` independent segment profiles, measured (or loaded with ``--profiles-from``)."""
    profiles = []
    for rep in range(setup.repetitions):
        if setup.profiles_from is not None:
            profiles.append(SegmentProfile.load(setup.profiles_from / f"segments_{name}_{rep}.json"))
            continue
        print(f"  {name}: profile {rep + 1}/{setup.repetitions} at batch sizes {setup.profile_batches}", flush=True)
        seg = time_segments(plan, example, plan.candidates, setup.profile_batches, setup.server_device, setup.threads,
                            warmup=setup.warmup, repeats=setup.repeats, max_repeats=setup.max_repeats,
                            max_rel_iqr=setup.max_rel_iqr)
        seg.hardware = setup.hardware
        seg.key = {"model": name, "image_size": setup.image_size, "repetition": rep}
        profiles.append(seg)
    return profiles


# --- evaluation: latency grids and shares --------------------------------------------------------

def summarize(profiles: Profiles, grid: np.ndarray, labels: list[str], axes: GridAxes = AXES) -> dict[str, Any]:
    """The useful-split share (a split is the argmin), the ends' shares, the band of rates and
    batches where a split is useful, and what choosing per scenario gains over the best static option."""
    device, offload, split_best = end_options(profiles, grid)
    useful = split_best < np.minimum(device, offload)
    best = grid.min(axis=0)
    static = int(np.argmin(grid.mean(axis=(1, 2))))
    rates, batches = axes.rates[useful.any(axis=0)], axes.batches[useful.any(axis=1)]
    return {
        "useful_split_pct": 100.0 * float(useful.mean()),
        "best_device_only_pct": 100.0 * float(np.mean(device <= best)),
        "best_full_offload_pct": 100.0 * float(np.mean(offload <= best)),
        "useful_rates_mb_s": [float(rates.min()), float(rates.max())] if len(rates) else None,
        "useful_batches": [int(batches.min()), int(batches.max())] if len(batches) else None,
        "best_static": labels[static],
        "gain_over_best_static_mean_pct": 100.0 * float(((grid[static] - best) / grid[static]).mean()),
    }


@dataclass
class Evaluation:
    """One codec, device slowdown and rate scale over every repetition's profile."""

    summaries: list[dict[str, Any]]
    median_rep: int
    profiles: Profiles  # of the median repetition
    grid: np.ndarray

    def share(self) -> dict[str, Any]:
        shares = [s["useful_split_pct"] for s in self.summaries]
        return {"median": statistics.median(shares), "min": min(shares), "max": max(shares), "repetitions": shares}

    @property
    def median_summary(self) -> dict[str, Any]:
        return self.summaries[self.median_rep]


def evaluate(base: list[Profiles], labels: list[str], slowdown: float, rate_scale: float = 1.0) -> Evaluation:
    """``base`` (one codec's profiles per repetition, device as fast as the server) with the device
    ``slowdown`` times slower, on the paper's grid with rates divided by ``rate_scale``."""
    axes = paper_axes(rate_scale)
    runs = []
    for profiles in base:
        slowed = scale_heads(profiles, slowdown)
        grid = latency_grid(slowed, axes, paper_batch)
        runs.append((summarize(slowed, grid, labels, axes), slowed, grid))
    order = sorted(range(len(runs)), key=lambda i: runs[i][0]["useful_split_pct"])
    median_rep = order[len(order) // 2]
    return Evaluation([r[0] for r in runs], median_rep, *runs[median_rep][1:])


@dataclass
class ModelResult:
    name: str
    labels: list[str]
    bottlenecks: list[dict[str, Any]]
    segments: list[SegmentProfile]
    codecs: dict[str, Evaluation]
    sensitivity: list[dict[str, Any]]  # {"codec", "slowdown", "rate_scale", "useful_split_pct", "useful_rates_mb_s"}
    check: dict[str, Any]
    profile_s: float
    input_elements: int
    rescaled: dict[str, Evaluation] = field(default_factory=dict)  # codec -> rates / the largest rate scale
    paths: list[Path] = field(default_factory=list)

    @property
    def primary(self) -> Evaluation:
        return self.codecs[PRIMARY_CODEC]


def sensitivity(base: dict[str, list[Profiles]], labels: list[str], setup: PaperSetup) -> list[dict[str, Any]]:
    """Each codec's useful-split share for other device slowdowns and rate scales."""
    variants = [(s, 1.0) for s in sorted({setup.slowdown, *setup.other_slowdowns})]
    variants += [(setup.slowdown, k) for k in setup.rate_scales]
    rows = []
    for codec_name, profiles in base.items():
        for slowdown, rate_scale in variants:
            ev = evaluate(profiles, labels, slowdown, rate_scale)
            rows.append({"codec": codec_name, "slowdown": slowdown, "rate_scale": rate_scale,
                         "useful_split_pct": ev.share(), "useful_rates_mb_s": ev.median_summary["useful_rates_mb_s"]})
    return rows


def run_model(name: str, setup: PaperSetup, out: Path) -> ModelResult:
    model = build_model(name, setup.image_size)
    example = torch.randint(0, 256, (1, 3, setup.image_size, setup.image_size), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    rule = BlockOutputsRule()
    plan = analyze(model, example, codec=RawCodec(), rule=rule)
    blocks = set(rule.block_paths(model))
    labels = option_labels(plan, blocks)
    crossings = crossing_values(plan, example, plan.candidates)
    started = time.perf_counter()
    segments = segment_profiles(name, plan, example, setup)
    profile_s = time.perf_counter() - started
    base = {c: [cut_profiles(seg, plan.candidates, crossings, CODECS[c](), 1.0, setup.server_device,
                             key={**seg.key, "codec": c}) for seg in segments] for c in setup.codecs}
    result = ModelResult(name, labels, bottleneck_rows(name, plan, blocks, crossings), segments,
                         {c: evaluate(profiles, labels, setup.slowdown) for c, profiles in base.items()},
                         sensitivity(base, labels, setup), check_segments(plan, example, setup),
                         profile_s, plan.cuts[0].elements)
    if setup.rate_scales:
        result.rescaled = {c: evaluate(profiles, labels, setup.slowdown, max(setup.rate_scales))
                           for c, profiles in base.items()}
    result.paths = model_figures(result, setup, out)
    share = result.primary.share()
    print(f"{name:>16}: {len(result.bottlenecks)} natural bottlenecks; a split is useful in {share['median']:.1f}% "
          f"of scenarios (range {share['min']:.1f}-{share['max']:.1f}%); profiles {profile_s:.0f} s", flush=True)
    return result


# --- outputs: figures and tables -----------------------------------------------------------------

def model_figures(result: ModelResult, setup: PaperSetup, out: Path) -> list[Path]:
    paths = []
    for codec_name, ev in result.codecs.items():
        tag = f"{result.name}_{codec_name}"
        title = (f"{result.name} at {setup.image_size} px, {codec_name} codec; {setup.where}, device "
                 f"{setup.slowdown:g}x slower (profile {ev.median_rep + 1} of {len(ev.summaries)})")
        share = ev.share()
        paths.append(ev.profiles.save(out / f"profiles_{tag}.json"))
        paths.append(save(latency_panels(ev.profiles, ev.grid, AXES, result.labels, PANEL_BATCHES, title),
                          out / f"latency_vs_rate_{tag}.png"))
        paths.append(save(best_option_map(ev.grid.argmin(axis=0), AXES, result.labels,
                                          f"best option: {title}\na split is useful in {share['median']:.1f}% "
                                          f"(range {share['min']:.1f}-{share['max']:.1f}%)"),
                          out / f"best_option_{tag}.png"))
        paths.append(save(gain_maps(ev.grid, AXES, result.labels, f"gain of the best option: {title}",
                                    options=gain_options(ev.profiles, ev.grid)), out / f"gain_{tag}.png"))
    for codec_name, ev in result.rescaled.items():
        scale = max(setup.rate_scales)
        share = ev.share()
        title = (f"best option: {result.name} at {setup.image_size} px, {codec_name} codec; {setup.where}, device "
                 f"{setup.slowdown:g}x slower; rates / {scale:g}\na split is useful in {share['median']:.1f}% "
                 f"(range {share['min']:.1f}-{share['max']:.1f}%)")
        paths.append(save(best_option_map(ev.grid.argmin(axis=0), paper_axes(scale), result.labels, title),
                          out / f"best_option_{result.name}_{codec_name}_rates_div{scale:g}.png"))
    for rep, seg in enumerate(result.segments):
        paths.append(seg.save(out / f"segments_{result.name}_{rep}.json"))
    return paths


def summary_table(results: list[ModelResult], setup: PaperSetup) -> pd.DataFrame:
    rows = []
    for r in results:
        seg = r.segments[0]
        for codec_name, ev in r.codecs.items():
            s, share = ev.median_summary, ev.share()
            band = s["useful_rates_mb_s"]
            rows.append({
                "model": r.name, "codec": codec_name, "natural_bottlenecks": len(r.bottlenecks),
                "useful_split_pct": share["median"], "useful_min_pct": share["min"], "useful_max_pct": share["max"],
                "useful_rates_MB_s": f"{band[0]:g}-{band[1]:g}" if band else "-",
                "best_device_only_pct": s["best_device_only_pct"], "best_full_offload_pct": s["best_full_offload_pct"],
                "device_only_ms_per_image": 1e3 * setup.slowdown * seg.total(1)[0],
                "server_model_ms_per_image": 1e3 * seg.total(1)[0],
                "gain_over_best_static_mean_pct": s["gain_over_best_static_mean_pct"],
            })
    return pd.DataFrame(rows)


def sensitivity_table(results: list[ModelResult]) -> pd.DataFrame:
    """Per model and codec, the useful-split share, median [range], for each variant."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        for v in r.sensitivity:
            row = rows.setdefault((r.name, v["codec"]), {"model": r.name, "codec": v["codec"]})
            share = v["useful_split_pct"]
            column = f"device {v['slowdown']:g}x" + (f", rates /{v['rate_scale']:g}" if v["rate_scale"] != 1 else "")
            row[column] = f"{share['median']:.1f} [{share['min']:.1f}-{share['max']:.1f}]"
    return pd.DataFrame(list(rows.values()))


def write_tables(results: list[ModelResult], summary: pd.DataFrame, out: Path) -> list[Path]:
    bottlenecks = pd.DataFrame([row for r in results for row in r.bottlenecks])
    (out / "bottlenecks.md").write_text(markdown(bottlenecks, digits=3))
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(summary, digits=1))
    (out / "sensitivity.md").write_text(markdown(sensitivity_table(results)))
    return [out / "bottlenecks.md", out / "summary.csv", out / "summary.md", out / "sensitivity.md"]


def useful_figure(results: list[ModelResult], setup: PaperSetup, out: Path) -> Path:
    """The useful-split share per model and codec at the paper's rates (and divided by the largest
    rate scale, when there is one): median bars, whiskers over the profiles."""
    groups = [f"{r.name}\n{c}" for r in results for c in r.codecs]
    variants = [("rates 1-127 MB/s", [ev for r in results for ev in r.codecs.values()])]
    if setup.rate_scales:
        scale = max(setup.rate_scales)
        variants.append((f"rates / {scale:g}", [ev for r in results for ev in r.rescaled.values()]))
    series = [(name, [e.share()["median"] for e in evs], [e.share()["min"] for e in evs],
               [e.share()["max"] for e in evs]) for name, evs in variants]
    title = (f"a split is the fastest option (batch 1-62); {setup.where}, device {setup.slowdown:g}x slower; "
             f"median and range of {setup.repetitions} profiles")
    return save(grouped_share_bars(groups, series, "scenarios where a split is useful (%)", title),
                out / "useful_splits.png")


# --- records: JSON, targets, MLflow --------------------------------------------------------------

def widest_rel_iqr(r: ModelResult) -> float:
    return max(s.widest_rel_iqr(b) for s in r.segments for b in s.batch_sizes)


def model_record(r: ModelResult) -> dict[str, Any]:
    seg = r.segments[0]
    return {
        "input_elements": r.input_elements,
        "natural_bottlenecks": [{k: row[k] for k in ("block", "cut", "elements", "compression", "raw_kB", "float16_kB",
                                                     "head_flops_share")} for row in r.bottlenecks],
        "useful_split_pct": r.primary.share(),
        "codecs": {c: {"useful_split_pct": ev.share(), "median_profile": ev.median_summary}
                   for c, ev in r.codecs.items()},
        "sensitivity": r.sensitivity,
        "profile": {"profile_s": r.profile_s, "batch_sizes": seg.batch_sizes,
                    "server_model_ms_per_image": {b: 1e3 * seg.total(b)[0] / b for b in seg.batch_sizes},
                    "passes": [{b: s.repeats(b) for b in s.batch_sizes} for s in r.segments],
                    "widest_rel_iqr": widest_rel_iqr(r)},
        "segment_check": r.check,
    }


# The paper's ViT-B/32 compression at its first encoder block, with the rounding of its figure.
VIT_FIRST_BLOCK_COMPRESSION = 0.26


def targets(results: list[ModelResult], setup: PaperSetup, wall_s: float) -> list[dict[str, Any]]:
    found = []
    if setup.quick and setup.profiles_from is None:
        found.append({"name": "wall_s", "value": wall_s, "op": "<=", "target": QUICK_WALL_S})
    for r in results:
        share = r.primary.share()
        found += [
            {"name": f"{r.name}_natural_bottlenecks", "value": len(r.bottlenecks), "op": ">=", "target": 1},
            # noise must not decide the claim: the share moves little between independent profiles
            {"name": f"{r.name}_useful_split_spread_pp", "value": share["max"] - share["min"], "op": "<=",
             "target": 10.0},
            # the segment profile agrees with timing the split's real head and tail modules
            {"name": f"{r.name}_segment_check_error_pct", "value": r.check["error_pct"], "op": "<=", "target": 15.0},
            {"name": f"{r.name}_profile_widest_rel_iqr", "value": widest_rel_iqr(r), "op": "<=", "target": 0.10},
        ]
        if r.name == "vit_b_32" and setup.image_size == 384 and r.bottlenecks:
            # the paper reports the first encoder block's output at about a quarter of the input; by
            # hand, 12 x 12 patches + the class token, 768 wide, over 3 x 384 x 384 elements is 0.2517
            found.append({"name": "vit_b_32_first_encoder_block_compression", "value": r.bottlenecks[0]["compression"],
                          "op": "<=", "target": VIT_FIRST_BLOCK_COMPRESSION})
    return found


def passed(target: dict[str, Any]) -> bool:
    return target["value"] <= target["target"] if target["op"] == "<=" else target["value"] >= target["target"]


def record(results: list[ModelResult], setup: PaperSetup, wall_s: float) -> dict[str, Any]:
    data: dict[str, Any] = {r.name: model_record(r) for r in results}
    data["run"] = {
        "mode": "paper", "quick": setup.quick, "wall_s": wall_s, "hardware": setup.hardware,
        "gpu": setup.server_device.type == "cuda", "server_device": str(setup.server_device),
        "device": f"the server's hardware, {setup.slowdown:g}x slower", "slowdown": setup.slowdown,
        "weights": "random (torchvision weights need the internet; timing does not depend on them)",
        "image_size": setup.image_size, "rates_MB_s": [1, 127], "batches": [1, int(BATCHES[-1])],
        "profile_batch_sizes": setup.profile_batches, "passes": [setup.repeats, setup.max_repeats],
        "repetitions": setup.repetitions,
        "profiles": f"loaded from {setup.profiles_from}" if setup.profiles_from else "measured",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": source_commit(), "torch": torch.__version__,
    }
    data["targets"] = targets(results, setup, wall_s)
    return data


def log_runs(results: list[ModelResult], setup: PaperSetup, shared: list[Path], uri: str | None) -> list[str]:
    from splitcomp.track import start_run  # loads MLflow, which --no-tracking does without

    run_ids = []
    for r in results:
        params = {"mode": "paper", "model": r.name, "image_size": setup.image_size, "weights": "random",
                  "codecs": ",".join(setup.codecs), "device.slowdown": setup.slowdown,
                  "server.device": str(setup.server_device), "hardware": setup.hardware,
                  "profile.batch_sizes": setup.profile_batches, "profile.repeats": setup.repeats,
                  "profile.max_repeats": setup.max_repeats, "repetitions": setup.repetitions, "quick": setup.quick,
                  "rates_MB_s": "1..127", "batches": f"1..{BATCHES[-1]}", "bottleneck": "blocks"}
        with start_run(uri=uri, experiment="paper_grid", run_name=f"paper_{r.name}", params=params) as tracker:
            metrics = {"natural_bottlenecks": len(r.bottlenecks), "profile_s": r.profile_s,
                       "segment_check_error_pct": r.check["error_pct"], "profile_widest_rel_iqr": widest_rel_iqr(r),
                       "server_model_ms_per_image": 1e3 * r.segments[0].total(1)[0]}
            for codec_name, ev in r.codecs.items():
                share, s = ev.share(), ev.median_summary
                metrics.update({f"useful_split_pct_{codec_name}": share["median"],
                                f"useful_split_pct_min_{codec_name}": share["min"],
                                f"useful_split_pct_max_{codec_name}": share["max"],
                                f"best_device_only_pct_{codec_name}": s["best_device_only_pct"],
                                f"best_full_offload_pct_{codec_name}": s["best_full_offload_pct"],
                                f"gain_over_best_static_mean_pct_{codec_name}": s["gain_over_best_static_mean_pct"]})
            tracker.log_metrics(metrics)
            for path in [*r.paths, *shared]:
                tracker.log_artifact(path, "figures" if path.suffix == ".png" else None)
            run_ids.append(tracker.run_id)
    return run_ids


def banner(setup: PaperSetup) -> str:
    if setup.server_device.type == "cuda":
        where = f"on the GPU {setup.hardware}: server tails on it, the device as the same GPU {setup.slowdown:g}x slower"
    else:
        where = (f"on the CPU ({setup.hardware}; no GPU here): the server is this CPU, the device the same "
                 f"{setup.slowdown:g}x slower; --server-device cuda runs it on a GPU where there is one")
    return (f"paper mode {where}.\nModels {', '.join(setup.models)} at {setup.image_size} px with random weights "
            "(timing does not depend on them); batch 1-62 images on device, link and server; 1-127 MB/s.")


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    setup = setup_from(args)
    out = args.out or ROOT / "outputs" / "paper_grid_paper"
    out.mkdir(parents=True, exist_ok=True)
    print(banner(setup), flush=True)
    results = [run_model(name, setup, out) for name in setup.models]
    summary = summary_table(results, setup)
    shared = [*write_tables(results, summary, out), useful_figure(results, setup, out)]
    run_ids = [] if args.no_tracking else log_runs(results, setup, shared, args.tracking_uri)
    wall_s = time.perf_counter() - started
    data = record(results, setup, wall_s)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print("\n" + summary.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print("\n" + pd.DataFrame([row for r in results for row in r.bottlenecks]).to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nuseful-split share (%, median [range]) for other device slowdowns and rate scales:")
    print(sensitivity_table(results).to_string(index=False))
    print("\ntargets:")
    for t in data["targets"]:
        print(f"  {'ok  ' if passed(t) else 'MISS'} {t['name']}: {t['value']:.3g} {t['op']} {t['target']:.3g}")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print(f"\n{banner(setup).splitlines()[0]}\nfiles in {out} ({wall_s:.0f} s); "
          + (f"MLflow runs {', '.join(run_ids)} in experiment paper_grid" if run_ids else "no MLflow runs (--no-tracking)"))
