"""How well the latency model predicts what the real runtime measures.

Real-socket runs (edge-server process, user-space shaped TCP link with a 10 ms one-way delay)
of a static policy at every candidate cut of the configured model (default: the fitted
EfficientNet-Lite0 at 224 px on Fashion-MNIST), over constant channels of several rates and
under several server loads (idle, batches of 4, a slowdown of 2). Every request's record
carries the prediction made before it ran (``predicted_latency_s``, from the profiles, the
rate estimate and the load the server last reported) and the measured end-to-end latency
(``latency_s``). Reported: the mean absolute percentage error (MAPE) of the prediction per cut,
per setting and overall, with the signed bias and the terms that disagree.

The primary figure uses ``estimator=oracle`` (the prediction reads the true channel rate), so it
measures the latency model, not the rate estimator. The same runs with the default EWMA
estimator (which learns the rate from the device's own transfers and probes) give a secondary
figure; a request made before any estimate exists has no prediction and is left out (counted
in the JSON as ``unpredicted``).

Every setting is profiled afresh just before its runs, and the device-only requests' error is
printed as a floor: it is the host's compute noise against the profile, with no network and no
server in it. On a shared machine that floor, not the model, dominates the figure.

    python experiments/bench_prediction.py --quick --json outputs/bench/prediction.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from splitcomp.build import socket_bench
from splitcomp.configs import project_root
from splitcomp.errors import SplitcompError

RATES_BPS = (5e6, 20e6, 100e6)
LOADS = {
    "none": ["server_load=none"],
    "batch4": ["server_load=batch", "server_load.batch_size=4"],
    "slowdown2": ["server_load=trace"],  # path set at run time to a constant slowdown of 2
}
# Comparable groups of terms: (measured record keys, predicted keys). The runtime splits the
# network time into uplink and downlink, each with its one-way delay; the model puts both delays
# into its rtt. "other" is the rest of the measured latency (encode, decode, queueing, the
# server's own handling and the wake-ups between the processes).
GROUPS = {
    "device": (("device_s",), ("device_s",)),
    "server": (("server_s",), ("server_s",)),
    "network": (("uplink_s", "downlink_s"), ("uplink_s", "rtt_s", "downlink_s")),
}


def ape(records: list[dict]) -> np.ndarray:
    """Absolute percentage errors |predicted - measured| / measured of the records with a prediction."""
    pred = np.array([r["predicted_latency_s"] for r in records], dtype=float)
    meas = np.array([r["latency_s"] for r in records], dtype=float)
    ok = np.isfinite(pred) & (meas > 0)
    return np.abs(pred[ok] - meas[ok]) / meas[ok]


def bias(records: list[dict]) -> float:
    """Mean signed relative error (predicted - measured) / measured: < 0 means the model is optimistic."""
    pairs = [(r["predicted_latency_s"], r["latency_s"]) for r in records if np.isfinite(r["predicted_latency_s"])]
    return float(np.mean([(p - m) / m for p, m in pairs])) if pairs else float("nan")


def group_times(r: dict) -> dict[str, tuple[float, float]]:
    """(measured, predicted) seconds of each group of terms of one record."""
    out = {name: (sum(r[k] for k in measured), sum(r.get(f"predicted_{k}", 0.0) for k in predicted))
           for name, (measured, predicted) in GROUPS.items()}
    out["other"] = (r["latency_s"] - sum(m for m, _ in out.values()),
                    r["predicted_latency_s"] - sum(p for _, p in out.values()))
    return out


def term_medians(records: list[dict]) -> dict[str, dict[str, float]]:
    """Median measured and predicted milliseconds of each group of terms (see GROUPS)."""
    times = [group_times(r) for r in records if np.isfinite(r["predicted_latency_s"])]
    return {name: {"measured_ms": 1e3 * float(np.median([t[name][0] for t in times])),
                   "predicted_ms": 1e3 * float(np.median([t[name][1] for t in times]))}
            for name in [*GROUPS, "other"]} if times else {}


def cut_row(name: str, records: list[dict]) -> dict:
    errors = ape(records)
    return {"cut": name, "requests": len(records), "predicted": len(errors),
            "measured_ms_mean": 1e3 * float(np.mean([r["latency_s"] for r in records])),
            "predicted_ms_mean": 1e3 * float(np.nanmean([r["predicted_latency_s"] for r in records])),
            "mape": float(errors.mean()) if len(errors) else float("nan"), "bias": bias(records),
            "terms": term_medians(records)}


def run_setting(rate_bps: float, load: str, args: argparse.Namespace, work_dir: Path) -> dict:
    """Every candidate cut at one rate and load, with the oracle and the EWMA estimator."""
    # profiled afresh for every setting, just before its runs: on a shared machine compute times
    # drift over minutes, and a profile from another moment would blame the drift on the model
    overrides = [*args.overrides, f"dataset.limit={args.requests}", "channel=constant", f"channel.rate_bps={rate_bps}",
                 "link=shaped", "estimator=oracle", "profile.cache_dir=null", "profile.batch_sizes=[1,4]",
                 *LOADS[load]]
    if load == "slowdown2":
        overrides.append(f"server_load.path={work_dir / 'slowdown2.csv'}")
    row: dict = {"rate_mbps": rate_bps / 1e6, "load": load, "cuts": {}, "records": {}}
    with socket_bench(overrides, work_dir / "server") as bench:
        for cut in bench.scenario.profiles.cuts:
            static = OmegaConf.create({"_target_": "splitcomp.policy.simple.Static", "cut": cut.name})
            records = {"oracle": bench.run(static), "ewma": bench.run(static, estimator="ewma")}
            row["records"][cut.name] = records
            row["cuts"][cut.name] = {est: cut_row(cut.name, recs) for est, recs in records.items()}
    for est in ("oracle", "ewma"):
        everything = [r for recs in row["records"].values() for r in recs[est]]
        errors = ape(everything)
        row[f"mape_{est}"] = float(errors.mean())
        row[f"bias_{est}"] = bias(everything)
        row[f"unpredicted_{est}"] = len(everything) - len(errors)
    return row


def print_setting(row: dict) -> None:
    print(f"\n{row['rate_mbps']:g} Mbit/s, load {row['load']}: MAPE {100 * row['mape_oracle']:.1f}% "
          f"(bias {100 * row['bias_oracle']:+.1f}%), with EWMA {100 * row['mape_ewma']:.1f}%")
    print(f"  {'cut':24s} {'measured ms':>11s} {'predicted':>9s} {'MAPE':>6s} {'bias':>6s}  "
          "largest gap, measured - predicted (median ms)")
    for name, ests in row["cuts"].items():
        c = ests["oracle"]
        gaps = {t: v["measured_ms"] - v["predicted_ms"] for t, v in c["terms"].items()}
        worst = max(gaps, key=lambda t: abs(gaps[t]))
        print(f"  {name:24s} {c['measured_ms_mean']:11.1f} {c['predicted_ms_mean']:9.1f} {100 * c['mape']:5.1f}% "
              f"{100 * c['bias']:+5.1f}%  {worst} {gaps[worst]:+.1f}")


def summary(rows: list[dict], est: str) -> dict:
    everything = [r for row in rows for recs in row["records"].values() for r in recs[est]]
    errors = ape(everything)
    # device-only requests are one head on the device: their error is the host's compute noise
    # against the profile, with no network or server in it (a floor for the other cuts)
    alone = ape([r for r in everything if r["bytes_up"] == 0 and not r["fallback"]])
    return {"mape": float(errors.mean()), "median_ape": float(np.median(errors)), "bias": bias(everything),
            "device_only_mape": float(alone.mean()) if len(alone) else float("nan"),
            "requests": len(everything), "unpredicted": len(everything) - len(errors)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two loads, fewer requests (under 5 minutes)")
    parser.add_argument("--json", type=Path, help="write the raw figures and targets here")
    parser.add_argument("--requests", type=int, help="requests per cut and estimator (default 6, 12 without --quick)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=lite0 dataset=samples")
    args = parser.parse_args(argv)
    args.requests = args.requests or (6 if args.quick else 12)
    loads = ["none", "batch4"] if args.quick else list(LOADS)

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = []
    (project_root() / "outputs" / "bench").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project_root() / "outputs" / "bench") as tmp:
        work_dir = Path(tmp)
        (work_dir / "slowdown2.csv").write_text("t_s,slowdown\n0,2.0\n")
        try:
            for load in loads:
                for rate in RATES_BPS:
                    rows.append(run_setting(rate, load, args, work_dir))
                    print_setting(rows[-1])
        except SplitcompError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    wall = time.perf_counter() - started

    overall = {est: summary(rows, est) for est in ("oracle", "ewma")}
    print(f"\n{'setting':22s} {'MAPE oracle':>11s} {'MAPE ewma':>10s}")
    for row in rows:
        print(f"{row['rate_mbps']:g} Mbit/s {row['load']:12s} {100 * row['mape_oracle']:10.1f}% {100 * row['mape_ewma']:9.1f}%")
    print(f"{'overall':22s} {100 * overall['oracle']['mape']:10.1f}% {100 * overall['ewma']['mape']:9.1f}%")
    o = overall["oracle"]
    print(f"oracle estimator: median APE {100 * o['median_ape']:.1f}%, bias {100 * o['bias']:+.1f}%, "
          f"device-only requests alone (compute noise floor) {100 * o['device_only_mape']:.1f}%")
    print(f"{wall:.0f} s; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    if o["device_only_mape"] > 0.10:
        print("warning: device-only requests alone miss their profile by more than 10%: the host's compute "
              "speed changed during the run (other load?), so the figure measures the host more than the model")
    targets = [{"name": "prediction_mape_overall", "value": overall["oracle"]["mape"], "op": "<=", "target": 0.10,
                "estimator": "oracle"}]
    for t in targets:
        print(f"target {t['name']}: {t['value']:.3f} {t['op']} {t['target']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {"quick": args.quick, "requests_per_cut": args.requests, "rates_mbps": [r / 1e6 for r in RATES_BPS],
                    "loads": loads, "overrides": args.overrides, "link": "shaped", "estimators": ["oracle", "ewma"]}
        for row in rows:
            row["records"] = {cut: {est: [{k: v for k, v in r.items()} for r in recs] for est, recs in ests.items()}
                              for cut, ests in row["records"].items()}
        args.json.write_text(json.dumps({"settings": settings, "wall_s": wall,
                                         "load_average": [load_before, os.getloadavg()[0]], "overall": overall,
                                         "rows": rows, "targets": targets}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
