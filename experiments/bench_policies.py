"""How every split policy compares with the oracle on windows of real traces (simulator).

For windows of real 3G, 4G, 5G and WiFi throughput traces (used as the uplink rate), with and
without server load, every policy runs on the same scenario: a camera sending one request every
``--interval`` seconds (periodic arrivals, so all policies see the same start times and the
oracle is a per-request lower bound). Reported per policy: mean and p95 latency as a ratio to
the oracle's, averaged over the windows.

Targets:
* ``dynamic_mean_over_oracle``: the MEAN over all windows of (dynamic mean latency / oracle mean
  latency); the max over windows is in the JSON as ``dynamic_mean_over_oracle_max``.
* ``dynamic_beats_best_static_share``: among the windows where the best cut changes (the oracle's
  most frequent cut covers less than 95% of the requests), the fraction in which dynamic's mean
  latency is below best_static's.

Profiles: ``--profiles PATH`` takes a measured profiles JSON (``splitcomp.profile.latency.Profiles``);
without it, :func:`reference_profiles` gives a documented EfficientNet-Lite0-like set.
``--socket`` also replays a few windows on the real socket runtime with the configured model
(:func:`socket_policies.run_policies`); its target joins the list as
``socket_dynamic_mean_over_oracle``.

    python experiments/bench_policies.py --quick --json outputs/bench_policies.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from splitcomp.configs import project_root
from splitcomp.policy import (
    Bandit,
    BestStatic,
    DeviceOnly,
    Dynamic,
    EwmaEstimator,
    HarmonicEstimator,
    LastEstimator,
    Neurosurgeon,
    Oracle,
    OracleEstimator,
    ServerOnly,
)
from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles
from splitcomp.scenario import BatchLoad, ClientsLoad, load_trace
from splitcomp.scenario.arrivals import Periodic
from splitcomp.sim import RunEnv, compare_policies, simulate_env

ROOT = project_root()
TRACES_DIR = ROOT / ".." / "shared" / "traces"

# (kind, file under traces/): the uplink follows these downlink throughput logs (documented
# limitation: the public traces measure the downlink)
TRACES = [
    ("3G", "norway3g_hsdpa_pensieve/norway_bus_1"),
    ("3G", "raca5g_ucc/5G-production-dataset/Download/Driving/B_2019.12.16_11.49.59.csv"),
    ("3G", "mahimahi_cellular/TMobile-UMTS-driving.down"),
    ("4G", "raca4g_ucc_godashbed/4G_A_2018.01.27_13.58.29.csv"),
    ("4G", "mahimahi_cellular/ATT-LTE-driving-2016.down"),
    ("4G", "ghent4g_ugent/report_foot_0006.log"),
    ("4G", "lumos5g_umn/4G/4g_trace_driving_50015_dr"),
    ("5G", "raca5g_ucc/5G-production-dataset/Download/Driving/B_2020.01.16_09.56.56.csv"),
    ("5G", "raca5g_ucc/5G-production-dataset/Download/Driving/B_2020.01.16_12.10.03.csv"),
    ("5G", "lumos5g_umn/5G/5g_trace_1_driving"),
    ("WiFi", "multipath_wireless_aydini/13_1_wifi.csv"),
    ("WiFi", "lumos_ict_wifi/210326_2132-50Mbps-wifi_2.4GHz-weak-ed_4s-BBA.csv"),
]


REFERENCE_CUTS = [  # name, cumulative FLOP share, bytes crossing
    ("input", 0.0, 150528), ("block4", 0.45, 62720), ("block5", 0.60, 31360), ("block6", 0.75, 43904),
    ("block7", 0.88, 18816), ("block8", 0.93, 31360), ("pool", 0.995, 2560),
]
REFERENCE_FLOPS = 0.4e9  # EfficientNet-Lite0 at 224x224, multiply-adds


def reference_flops() -> dict[str, list[float]]:
    """Head and tail FLOPs of the reference cuts (what Neurosurgeon regresses on)."""
    shares = [(name, share) for name, share, _ in REFERENCE_CUTS] + [("output", 1.0)]
    return {name: [share * REFERENCE_FLOPS, (1 - share) * REFERENCE_FLOPS] for name, share in shares}


def reference_profiles(device_full_s: float = 0.2, server_full_s: float = 0.02) -> list[CutProfile]:
    """An EfficientNet-Lite0-like candidate set at 224x224 with a float16 codec.

    Bytes: the uint8 input (150528 B) and the float16 size of the block outputs that are smaller
    than it (28x28x40, 14x14x80, 14x14x112, 7x7x192, 7x7x320) and of the pooled 1280 features.
    Head time = cumulative FLOP share x ``device_full_s`` (a phone-class CPU, 200 ms); tail time =
    remaining share x ``server_full_s`` (a CPU edge server, 20 ms) at batch 1, and 3x that for a
    batch of 8 (batching amortises). Encode/decode cost 2 ns per byte. Response: 1000 float32
    logits (4000 B). These are assumptions, not measurements; pass ``--profiles`` for measured ones.
    """
    out = []
    for i, (name, share, nbytes) in enumerate(REFERENCE_CUTS):
        tail = (1 - share) * server_full_s
        out.append(CutProfile(
            index=i, name=name, bytes_up=nbytes, bytes_down=4000, head_s={1: share * device_full_s},
            tail_s={1: tail, 8: 3 * tail}, encode_s=2e-9 * nbytes if share else 0.0,
            decode_s=2e-9 * nbytes if share else 0.0, is_full_offload=(share == 0.0),
        ))
    out.append(CutProfile(index=len(REFERENCE_CUTS), name="output", bytes_up=0, bytes_down=0,
                          head_s={1: device_full_s}, tail_s={1: 0.0}, is_device_only=True))
    return out


def load_models(duration: float) -> dict[str, object]:
    """No load, a batch size that switches between 1 and 8, background clients switching 0 <-> 6."""
    half = duration / 4
    return {
        "none": None,
        "batch": BatchLoad(batch_size=1, schedule=[[0, 1], [half, 8], [2 * half, 1], [3 * half, 8]]),
        "clients": ClientsLoad(clients=0, rate_hz=20.0, schedule=[[0, 0], [half, 6], [2 * half, 0], [3 * half, 6]]),
    }


def policies(flops: dict[str, list[float]] | None) -> dict[str, object]:
    return {
        "device_only": DeviceOnly(), "server_only": ServerOnly(), "best_static": BestStatic(simulate=simulate_env),
        "dynamic": Dynamic(), "dynamic_h10": Dynamic(hysteresis=0.1), "neurosurgeon": Neurosurgeon(flops),
        "bandit": Bandit(), "oracle": Oracle(),
    }


def windows(trace_duration: float, window_s: float, count: int) -> list[float]:
    """``count`` window starts spread evenly over the trace."""
    last = max(trace_duration - window_s, 0.0)
    return [float(x) for x in np.linspace(0.0, last, count)]


def make_estimator(args):
    if args.estimator == "last":
        return LastEstimator(max_age_s=args.max_age)
    if args.estimator == "harmonic":
        return HarmonicEstimator(n=args.n, max_age_s=args.max_age)
    return EwmaEstimator(alpha=args.alpha, max_age_s=args.max_age)


def run_window(candidates, model, trace, load, args) -> dict[str, dict]:
    n = int(args.window / args.interval)
    env = RunEnv(candidates, model, Dynamic(), make_estimator(args),
                 Periodic(args.interval), trace, load_model=load, n_requests=n, seed=args.seed,
                 rtt_s=args.rtt, timeout_s=args.timeout)
    runs = compare_policies(env, policies(args.flops))
    runs.update(compare_policies(
        RunEnv(**{**env.__dict__, "estimator": OracleEstimator()}), {"dynamic_true_rate": Dynamic()}))
    out = {}
    for name, records in runs.items():
        lat = np.array([r["latency_s"] for r in records])
        cuts = Counter(r["cut_name"] for r in records)
        out[name] = {"mean_s": float(lat.mean()), "p95_s": float(np.percentile(lat, 95)),
                     "top_cut_share": cuts.most_common(1)[0][1] / len(records),
                     "fallbacks": int(sum(r["fallback"] for r in records))}
    return out


def socket_part(args) -> dict:
    """Real-socket replay of a few windows (experiments/socket_policies.py)."""
    from socket_policies import run_policies  # beside this script

    return {"status": "ran", "result": run_policies(quick=args.quick)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows (under a minute)")
    parser.add_argument("--json", type=Path, help="write the raw figures and targets here")
    parser.add_argument("--profiles", type=Path, help="a measured profiles JSON (default: reference set)")
    parser.add_argument("--socket", action="store_true", help="also replay on the real socket runtime")
    parser.add_argument("--window", type=float, default=60.0, help="window length in seconds")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between requests")
    parser.add_argument("--rtt", type=float, default=0.02, help="RTT in seconds")
    parser.add_argument("--timeout", type=float, default=1.0, help="uplink timeout before falling back")
    parser.add_argument("--estimator", choices=["ewma", "last", "harmonic"], default="ewma",
                        help="the rate estimator of the online policies")
    parser.add_argument("--alpha", type=float, default=0.5, help="EWMA weight of the newest sample")
    parser.add_argument("--n", type=int, default=3, help="samples of the harmonic mean")
    parser.add_argument("--only", help="only traces of this kind (3G, 4G, 5G, WiFi)")
    parser.add_argument("--max-age", type=float, default=0.5, help="estimate age that triggers a probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not TRACES_DIR.is_dir():
        print(f"error: no traces at {TRACES_DIR}", file=sys.stderr)
        return 2
    if args.profiles:
        candidates, source, args.flops = Profiles.load(args.profiles).cuts, str(args.profiles), None
    else:
        candidates, source, args.flops = reference_profiles(), "reference_profiles()", reference_flops()
    model = LatencyModel(Profiles({"source": source}, candidates), rtt_s=args.rtt)
    per_trace = 2 if args.quick else 6

    started = time.perf_counter()
    rows = []
    for kind, rel in TRACES:
        if args.only and kind != args.only:
            continue
        full = load_trace(TRACES_DIR / rel)
        for start in windows(full.duration, args.window, per_trace):
            trace = full.window(start, args.window)
            for load_name, load in load_models(args.window).items():
                result = run_window(candidates, model, trace, load, args)
                rows.append({"kind": kind, "trace": rel, "start_s": start, "load": load_name,
                             "mean_rate_mbps": trace.time_weighted_mean_rate_bps / 1e6, "policies": result})
    wall = time.perf_counter() - started

    names = list(rows[0]["policies"])
    table = summarise(rows, names)
    print_table(table, rows, wall, source)
    targets = compute_targets(rows)
    for t in targets:
        print(f"target {t['name']}: {t['value']:.3f} {t['op']} {t['target']}")
    socket = socket_part(args) if args.socket else {"status": "not requested"}
    print(f"socket part: {socket['status']}" + (f" ({socket.get('reason')})" if "reason" in socket else ""))
    for t in socket.get("result", {}).get("targets", []):
        print(f"target {t['name']}: {t['value']:.3f} {t['op']} {t['target']}")
        targets.append(t)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        extra = {"dynamic_mean_over_oracle_max": max(ratio(r, "dynamic", "mean_s") for r in rows)}
        args.json.write_text(json.dumps({"profiles": source, "settings": vars(args) | {"json": str(args.json),
                                         "profiles": source}, "wall_s": wall, "summary": table, "rows": rows,
                                         "socket": socket, **extra, "targets": targets}, indent=1, default=str))
    return 0


def ratio(row: dict, name: str, key: str) -> float:
    return row["policies"][name][key] / row["policies"]["oracle"][key]


def summarise(rows: list[dict], names: list[str]) -> dict[str, dict]:
    """Per kind and load: mean over windows of each policy's mean and p95 ratio to the oracle."""
    groups = sorted({(r["kind"], r["load"]) for r in rows}) + [("all", "all")]
    table = {}
    for kind, load in groups:
        sel = [r for r in rows if (kind, load) == ("all", "all") or (r["kind"], r["load"]) == (kind, load)]
        table[f"{kind}/{load}"] = {
            n: {"mean_ratio": float(np.mean([ratio(r, n, "mean_s") for r in sel])),
                "p95_ratio": float(np.mean([ratio(r, n, "p95_s") for r in sel])),
                "oracle_mean_ms": float(np.mean([r["policies"]["oracle"]["mean_s"] for r in sel]) * 1e3)}
            for n in names
        }
    return table


def print_table(table: dict, rows: list[dict], wall: float, source: str) -> None:
    names = list(next(iter(table.values())))
    print(f"{len(rows)} windows in {wall:.1f} s; profiles: {source}")
    print("mean latency / oracle (p95 / oracle), averaged over windows")
    print(f"{'scenario':16s} {'oracle ms':>9s} " + " ".join(f"{n:>17s}" for n in names))
    for group, cells in table.items():
        oracle_ms = cells["oracle"]["oracle_mean_ms"]
        print(f"{group:16s} {oracle_ms:9.1f} " + " ".join(
            f"{c['mean_ratio']:7.3f} ({c['p95_ratio']:6.2f})" for c in cells.values()))


def compute_targets(rows: list[dict]) -> list[dict]:
    dyn = [ratio(r, "dynamic", "mean_s") for r in rows]
    changing = [r for r in rows if r["policies"]["oracle"]["top_cut_share"] < 0.95]
    wins = [r["policies"]["dynamic"]["mean_s"] < r["policies"]["best_static"]["mean_s"] for r in changing]
    return [
        {"name": "dynamic_mean_over_oracle", "value": float(np.mean(dyn)), "op": "<=", "target": 1.05,
         "aggregate": "mean over windows"},
        {"name": "dynamic_beats_best_static_share", "value": float(np.mean(wins)) if wins else float("nan"),
         "op": ">=", "target": 1.0, "windows": len(changing)},
    ]


if __name__ == "__main__":
    sys.exit(main())
