"""How the split policies compare with the oracle on windows of real traces (simulator), with the
dynamic policy's parameters tuned on one set of traces and every figure reported on another.

**Traces.** ``TUNING`` and ``TEST`` below are fixed, disjoint lists of real 3G, 4G, 5G and WiFi
throughput traces from ``../shared/traces`` (used as the uplink rate; the public traces measure
the downlink). Every parameter of the dynamic policy (estimator kind and constants, fast drop,
probe age, hysteresis, deadline-aware fallback) is chosen by a coordinate search on the tuning
windows alone; the targets and the reported tables are on the test windows.

**Realistic settings** (what a user's run has, not what a policy would like):

* measured profiles of the default workload (EfficientNet-Lite0 + fitted head, raw codec,
  ``device.slowdown=4``: ``experiments/profiles/lite0_fashion_mnist_raw.json``, measured by
  ``splitcomp-profile``), and a slower device (``device.slowdown=10``: the head times x 2.5);
* compute noise drawn from the profiles' measured spread (the simulator's default);
* the RTT is unknown to the policies (the latency model has none): they use the RTT measured by
  their probes; the true one is 2 x ``--delay``;
* the link's real ``max_transfer_s`` (5 s) as the transfer deadline;
* the server's load known only from its answers (the request loop's rule);
* Poisson arrivals at 1 / (1.5 x the device-only time): requests overlap now and then, and the
  one request loop serialises them on the device, their waits counted in their latencies;
* server loads: none, a batch switching 1 <-> 8, and the default run's slowdown bursts
  (``conf/server_load/examples/tenant_bursts.csv``).

**Targets** (test windows):

* ``dynamic_mean_over_oracle``: the mean over windows of (dynamic mean latency / oracle mean
  latency), <= 1.05;
* ``dynamic_beats_best_static_share``: among the windows where the best cut changes (the
  oracle's most used cut serves less than 95 % of the requests), the share in which dynamic's
  mean latency is below best_static's, >= 0.95.

``--socket`` also replays a few windows on the real socket runtime
(:func:`socket_policies.run_policies`); its target joins the list as
``socket_dynamic_mean_over_oracle``.

    flock /tmp/splitcomp-bench.lock python3 experiments/bench_policies.py --quick --json outputs/bench_policies.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from splitcomp.configs import project_root
from splitcomp.policy import (
    BestStatic,
    DeviceOnly,
    Dynamic,
    EwmaEstimator,
    HarmonicEstimator,
    KalmanEstimator,
    LastEstimator,
    Oracle,
    OracleEstimator,
    ServerOnly,
    WindowEstimator,
)
from splitcomp.policy.base import DecisionContext, device_only_index
from splitcomp.policy.estimators import RateEstimator
from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles
from splitcomp.scenario import BatchLoad, TraceLoad, load_trace
from splitcomp.scenario.arrivals import Poisson
from splitcomp.scenario.trace import Trace
from splitcomp.sim import RunEnv, simulate_env

ROOT = project_root()
TRACES_DIR = ROOT / ".." / "shared" / "traces"
PROFILES = ROOT / "experiments" / "profiles" / "lite0_fashion_mnist_raw.json"
BURSTS = ROOT / "conf" / "server_load" / "examples" / "tenant_bursts.csv"
UCC = "raca5g_ucc/5G-production-dataset/Download/Driving"

# (kind, file under traces/); a file is in one list only
TUNING = [
    ("3G", "norway3g_hsdpa_pensieve/norway_bus_1"),
    ("3G", "mahimahi_cellular/TMobile-UMTS-driving.down"),
    ("4G", "raca4g_ucc_godashbed/4G_A_2018.01.27_13.58.29.csv"),
    ("4G", "ghent4g_ugent/report_foot_0006.log"),
    ("5G", f"{UCC}/B_2020.01.16_12.10.03.csv"),
    ("WiFi", "multipath_wireless_aydini/7_1_wifi.csv"),
]
TEST = [
    ("3G", f"{UCC}/B_2019.12.16_11.49.59.csv"),
    ("3G", "norway3g_hsdpa_pensieve/norway_tram_11"),
    ("4G", "mahimahi_cellular/ATT-LTE-driving-2016.down"),
    ("4G", "mahimahi_cellular/Verizon-LTE-short.down"),
    ("4G", "ghent4g_ugent/report_car_0004.log"),
    ("4G", "lumos5g_umn/4G/4g_trace_driving_50015_dr"),
    ("5G", f"{UCC}/B_2020.01.16_09.56.56.csv"),
    ("5G", "lumos5g_umn/5G/5g_trace_1_driving"),
    ("WiFi", "multipath_wireless_aydini/13_1_wifi.csv"),
    ("WiFi", "lumos_ict_wifi/210326_2132-50Mbps-wifi_2.4GHz-weak-ed_4s-BBA.csv"),
]
DEVICES = {"slowdown4": 1.0, "slowdown10": 10.0 / 4.0}  # head-time factor on the measured profiles
MAX_TRANSFER_S = 5.0  # conf/link/shaped.yaml
BASELINES = ("device_only", "server_only", "best_static", "oracle")


# each estimator kind: its class and the settings fields it takes besides the common ones
ESTIMATORS: dict[str, tuple[type[RateEstimator], tuple[str, ...]]] = {
    "ewma": (EwmaEstimator, ("alpha",)),
    "harmonic": (HarmonicEstimator, ("n",)),
    "last": (LastEstimator, ()),
    "window": (WindowEstimator, ("window_s",)),
    "kalman": (KalmanEstimator, ("drift", "noise")),
}


@dataclasses.dataclass(frozen=True)
class DynamicSettings:
    """Everything tunable of the dynamic policy and its estimator."""

    estimator: str = "ewma"  # a key of ESTIMATORS
    alpha: float = 0.8
    n: int = 5
    window_s: float = 2.0
    drift: float = 1.0
    noise: float = 0.3
    fast_drop: bool = False
    max_age_s: float = 0.25
    # not searched: the simulator measures a probe of any size exactly, so it would see only
    # what a larger probe costs, never what it buys on a real link (less timing noise)
    probe_bytes: int = 16384
    hysteresis: float = 0.0

    def make_estimator(self) -> RateEstimator:
        cls, own = ESTIMATORS[self.estimator]
        return cls(max_age_s=self.max_age_s, probe_bytes=self.probe_bytes, fast_drop=self.fast_drop,
                   **{name: getattr(self, name) for name in own})

    def label(self) -> str:
        own = ", ".join(f"{name}={getattr(self, name)}" for name in ESTIMATORS[self.estimator][1])
        return (f"{self.estimator}({own}) fast_drop={self.fast_drop} max_age={self.max_age_s} "
                f"probe_bytes={self.probe_bytes} h={self.hysteresis}")


DEFAULT = DynamicSettings()  # what conf/policy/dynamic.yaml + conf/estimator/ewma.yaml give

# the coordinate search: each step tries these changes of the best settings so far
SEARCH: list[list[dict]] = [
    [{"estimator": "ewma", "alpha": a} for a in (0.3, 0.5, 0.8)] + [{"estimator": "harmonic", "n": n} for n in (3, 5)]
    + [{"estimator": "last"}] + [{"estimator": "window", "window_s": w} for w in (0.5, 1.0, 2.0)]
    + [{"estimator": "kalman", "drift": d} for d in (1.0, 3.0)],
    [{"fast_drop": False}, {"fast_drop": True}],
    [{"max_age_s": a} for a in (0.25, 0.5, 1.0, 2.0)],
    [{"hysteresis": h} for h in (0.0, 0.05, 0.1)],
]


@dataclasses.dataclass
class Window:
    """One scenario: a trace window, a load model, a device."""

    split: str  # tuning | test
    kind: str
    trace_file: str
    start_s: float
    load: str
    device: str
    env: RunEnv

    def describe(self) -> dict:
        return {"split": self.split, "kind": self.kind, "trace": self.trace_file, "start_s": self.start_s,
                "load": self.load, "device": self.device,
                "mean_rate_mbps": self.env.uplink.time_weighted_mean_rate_bps / 1e6}


def device_profiles(cuts: list[CutProfile], head_factor: float) -> list[CutProfile]:
    """The measured cuts on a device ``head_factor`` times slower (heads and their spreads)."""
    if head_factor == 1.0:
        return list(cuts)
    return [dataclasses.replace(c, head_s={b: v * head_factor for b, v in c.head_s.items()},
                                head_spread_s={b: v * head_factor for b, v in c.head_spread_s.items()})
            for c in cuts]


def load_models() -> dict[str, object]:
    return {
        "none": None,
        "batch": BatchLoad(batch_size=1, schedule=[[0, 1], [8, 8], [16, 1], [24, 8], [32, 1], [40, 8], [48, 1]]),
        "bursts": TraceLoad(str(BURSTS)),
    }


def window_starts(trace: Trace, window_s: float, count: int) -> list[float]:
    """``count`` window starts spread evenly over the trace."""
    last = max(trace.duration - window_s, 0.0)
    return [float(x) for x in np.linspace(0.0, last, count)]


def build_windows(split: str, traces: list[tuple[str, str]], profiles: Profiles, args) -> list[Window]:
    out = []
    for (kind, rel), (device, factor) in itertools.product(traces, DEVICES.items()):
        cuts = device_profiles(profiles.cuts, factor)
        # the policies know no RTT: they use what their probes measure
        model = LatencyModel(Profiles(profiles.key, cuts), rtt_s=0.0)
        device_only_s = cuts[device_only_index(cuts)].head_at(1)
        full = load_trace(TRACES_DIR / rel)
        for start in window_starts(full, args.window, args.windows_per_trace):
            trace = full.window(start, args.window)
            for load_name, load in load_models().items():
                arrivals = Poisson(rate_hz=1.0 / (1.5 * device_only_s))
                n = max(20, int(args.window / (1.5 * device_only_s)))
                env = RunEnv(cuts, model, Dynamic(), DEFAULT.make_estimator(), arrivals, trace, load_model=load,
                             n_requests=n, seed=args.seed, rtt_s=2 * args.delay, timeout_s=MAX_TRANSFER_S,
                             sim_options={"noise": None})
                out.append(Window(split, kind, rel, start, load_name, device, env))
    return out


def run_policy(window: Window, policy, estimator: RateEstimator | None = None) -> dict:
    env = dataclasses.replace(window.env, policy=policy, estimator=estimator or DEFAULT.make_estimator())
    stats: dict = {}
    records = simulate_env(env, stats=stats)
    lat = np.array([r.latency_s for r in records])
    cuts = Counter(r.cut_name for r in records)
    return {"mean_s": float(lat.mean()), "p95_s": float(np.percentile(lat, 95)),
            "top_cut_share": cuts.most_common(1)[0][1] / len(records),
            "cut_shares": {k: v / len(records) for k, v in cuts.items()}, "fallbacks": stats.get("fallbacks", 0),
            "probes": stats.get("probes", 0), "probe_ms": float(np.mean([r.probe_s for r in records]) * 1e3),
            "wait_ms": float(np.mean([r.wait_s for r in records]) * 1e3)}


class DynamicKnowingLoad(Dynamic):
    """Dynamic reading the true server load and RTT of the moment instead of the reported load
    and the probed RTT: a diagnostic that shows what reading the load costs (not a device)."""

    name = "dynamic_true_load"

    def choose(self, ctx: DecisionContext) -> int:
        return super().choose(dataclasses.replace(ctx, load=ctx.true_load, rtt_estimate_s=ctx.true_rtt_s))


def run_dynamic(window: Window, settings: DynamicSettings) -> dict:
    return run_policy(window, Dynamic(hysteresis=settings.hysteresis), settings.make_estimator())


def baselines(window: Window) -> dict[str, dict]:
    makers: dict[str, Callable] = {"device_only": DeviceOnly, "server_only": ServerOnly,
                                   "best_static": lambda: BestStatic(simulate=simulate_env), "oracle": Oracle}
    return {name: run_policy(window, make()) for name, make in makers.items()}


def score(windows: list[Window], base: list[dict], settings: DynamicSettings) -> float:
    """Mean over windows of dynamic / oracle mean latency (what tuning minimises)."""
    return float(np.mean([run_dynamic(w, settings)["mean_s"] / b["oracle"]["mean_s"] for w, b in zip(windows, base)]))


def tune(windows: list[Window], base: list[dict], progress: bool) -> tuple[DynamicSettings, list[dict]]:
    """Coordinate search over ``SEARCH`` on the tuning windows; the best settings and the log."""
    best, best_score = DEFAULT, score(windows, base, DEFAULT)
    log = [{"settings": best.label(), "score": best_score}]
    steps = [(i, change) for i, group in enumerate(SEARCH) for change in group]
    bar = tqdm(total=len(steps), desc="tuning", unit="setting", disable=not progress)
    for group in SEARCH:
        group_best = best
        for change in group:
            candidate = dataclasses.replace(best, **change)
            if candidate != best:
                value = score(windows, base, candidate)
                log.append({"settings": candidate.label(), "score": value})
                if value < best_score:
                    group_best, best_score = candidate, value
            bar.update()
        best = group_best
    bar.close()
    return best, log


def evaluate(windows: list[Window], base: list[dict], tuned: DynamicSettings, progress: bool) -> list[dict]:
    rows = []
    for window, policies in tqdm(list(zip(windows, base)), desc="test windows", unit="window", disable=not progress):
        result = dict(policies)
        result["dynamic"] = run_dynamic(window, tuned)
        result["dynamic_default"] = run_dynamic(window, DEFAULT)
        # diagnostics: what dynamic loses by reading the load, and by estimating the rate
        result["dynamic_true_load"] = run_policy(window, DynamicKnowingLoad(tuned.hysteresis), tuned.make_estimator())
        result["dynamic_true_now"] = run_policy(window, DynamicKnowingLoad(tuned.hysteresis), OracleEstimator())
        rows.append({**window.describe(), "policies": result})
    return rows


def ratio(row: dict, name: str, key: str = "mean_s") -> float:
    return row["policies"][name][key] / row["policies"]["oracle"][key]


def changing(rows: list[dict]) -> list[dict]:
    """Windows where the best cut changes: the oracle's most used cut serves < 95 % of requests."""
    return [r for r in rows if r["policies"]["oracle"]["top_cut_share"] < 0.95]


def beats_where_it_matters(rows: list[dict], margin: float = 0.05) -> dict:
    """Dynamic against best_static in the windows where the oracle beats best_static by more than
    ``margin`` (a changing best cut that is worth following), for the report (not a target)."""
    worth = [r for r in rows if r["policies"]["best_static"]["mean_s"] > (1 + margin) * r["policies"]["oracle"]["mean_s"]]
    wins = [r["policies"]["dynamic"]["mean_s"] < r["policies"]["best_static"]["mean_s"] for r in worth]
    return {"margin": margin, "windows": len(worth), "share": float(np.mean(wins)) if wins else None}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per trace kind, per load and per device: each policy's mean and p95 ratio to the oracle."""
    names = list(rows[0]["policies"])
    groups: dict[str, list[dict]] = {"all": rows}
    for key in ("kind", "load", "device"):
        for value in sorted({r[key] for r in rows}):
            groups[f"{key}={value}"] = [r for r in rows if r[key] == value]
    table = {}
    for group, sel in groups.items():
        moving = changing(sel)
        table[group] = {
            "windows": len(sel), "changing": len(moving),
            "oracle_mean_ms": float(np.mean([r["policies"]["oracle"]["mean_s"] for r in sel]) * 1e3),
            "dynamic_beats_best_static": (float(np.mean([r["policies"]["dynamic"]["mean_s"] < r["policies"]["best_static"]["mean_s"]
                                                         for r in moving])) if moving else None),
            "policies": {n: {"mean_ratio": float(np.mean([ratio(r, n) for r in sel])),
                             "p95_ratio": float(np.mean([ratio(r, n, "p95_s") for r in sel]))} for n in names},
        }
    return table


def print_table(table: dict) -> None:
    names = list(next(iter(table.values()))["policies"])
    print("test windows: mean latency / oracle (p95 / oracle), averaged over windows")
    print(f"{'group':18s} {'win':>4s} {'chg':>4s} {'oracle ms':>9s} {'dyn>bs':>6s} " + " ".join(f"{n:>16s}" for n in names))
    for group, cells in table.items():
        beats = cells["dynamic_beats_best_static"]
        print(f"{group:18s} {cells['windows']:4d} {cells['changing']:4d} {cells['oracle_mean_ms']:9.1f} "
              f"{'-' if beats is None else f'{beats:.2f}':>6s} " + " ".join(
                  f"{c['mean_ratio']:7.3f} ({c['p95_ratio']:5.2f})" for c in cells["policies"].values()))


def compute_targets(rows: list[dict]) -> list[dict]:
    """The two targets on the test windows. "Dynamic mean latency <= 1.05x the oracle's": each
    window's ratio of mean latencies, averaged over the windows, so that every scenario counts
    the same whatever its latencies (``pooled_ratio``, the ratio of the summed means, is given
    beside it). "Better than best_static in >= 95 % of the windows where the best cut changes":
    the oracle's own choices say where it changes (:func:`changing`); the oracle and
    best_static are run without the dynamic policy's estimator or settings (they never probe)."""
    moving = changing(rows)
    wins = [r["policies"]["dynamic"]["mean_s"] < r["policies"]["best_static"]["mean_s"] for r in moving]
    return [
        {"name": "dynamic_mean_over_oracle", "value": float(np.mean([ratio(r, "dynamic") for r in rows])),
         "op": "<=", "target": 1.05, "aggregate": "mean over test windows", "windows": len(rows),
         "pooled_ratio": float(sum(r["policies"]["dynamic"]["mean_s"] for r in rows)
                               / sum(r["policies"]["oracle"]["mean_s"] for r in rows))},
        {"name": "dynamic_beats_best_static_share", "value": float(np.mean(wins)) if wins else float("nan"),
         "op": ">=", "target": 0.95, "aggregate": "test windows where the best cut changes", "windows": len(moving)},
    ]


def socket_part(args) -> dict:
    """Real-socket replay of a few windows (:func:`socket_policies.run_policies`)."""
    from socket_policies import run_policies  # beside this script; imports the whole runtime

    return {"status": "ran", "result": run_policies(quick=args.quick)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter windows (about 2 minutes here)")
    parser.add_argument("--json", type=Path, help="write the raw figures and targets here")
    parser.add_argument("--profiles", type=Path, default=PROFILES, help="a measured profiles JSON")
    parser.add_argument("--socket", action="store_true", help="also replay on the real socket runtime")
    parser.add_argument("--window", type=float, help="window length in seconds (default 60, quick 30)")
    parser.add_argument("--windows-per-trace", type=int, help="windows per trace (default 6, quick 4)")
    parser.add_argument("--delay", type=float, default=0.01, help="true one-way delay in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.window = args.window or (30.0 if args.quick else 60.0)
    args.windows_per_trace = args.windows_per_trace or (4 if args.quick else 6)
    progress = not args.no_progress

    if not TRACES_DIR.is_dir():
        print(f"error: no traces at {TRACES_DIR}; put the trace folder there", file=sys.stderr)
        return 2
    profiles = Profiles.load(args.profiles)
    started = time.perf_counter()
    tuning = build_windows("tuning", TUNING, profiles, args)
    test = build_windows("test", TEST, profiles, args)
    tuning_base = [baselines(w) for w in tqdm(tuning, desc="tuning baselines", unit="window", disable=not progress)]
    tuned, search_log = tune(tuning, tuning_base, progress)
    test_base = [baselines(w) for w in tqdm(test, desc="test baselines", unit="window", disable=not progress)]
    rows = evaluate(test, test_base, tuned, progress)
    wall = time.perf_counter() - started

    table = summarise(rows)
    print(f"{len(tuning)} tuning and {len(test)} test windows in {wall:.1f} s; profiles: {args.profiles}")
    print(f"tuned on the tuning traces: {tuned.label()} (default: {DEFAULT.label()})")
    print_table(table)
    targets = compute_targets(rows)
    for t in targets:
        print(f"target {t['name']}: {t['value']:.3f} {t['op']} {t['target']} ({t['windows']} windows)")
    worth = beats_where_it_matters(rows)
    print(f"dynamic beats best_static in {worth['share']} of the {worth['windows']} test windows where the oracle "
          f"beats best_static by more than {worth['margin']:.0%}")
    socket = socket_part(args) if args.socket else {"status": "not requested"}
    for t in socket.get("result", {}).get("targets", []):
        targets.append(t)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "profiles": str(args.profiles), "settings": {k: str(v) for k, v in vars(args).items()},
            "tuning_traces": [{"kind": k, "file": f} for k, f in TUNING],
            "test_traces": [{"kind": k, "file": f} for k, f in TEST],
            "tuned": dataclasses.asdict(tuned), "default": dataclasses.asdict(DEFAULT), "search": search_log,
            "wall_s": wall, "summary": table, "dynamic_beats_best_static_where_it_matters": worth, "rows": rows, "socket": socket, "targets": targets,
        }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
