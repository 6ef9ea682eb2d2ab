"""Fleet benchmark: many devices on one batching edge server, on the real runtime and in the simulator.

* **real**: the fleet of ``conf/fleet/default.yaml`` (16 emulated devices on real traces, 60 s,
  Poisson arrivals, all connected before they start together, as after a server restart) on one
  in-process batching edge server over loopback, once per policy (``dynamic``, ``fleet_aware``,
  ``device_only``; ``server_only`` too without ``--quick``). Herding shows in the table as the
  share of requests offloaded, its swing from one second to the next (``offload_share_std``), the
  batch sizes, and in the plots as the fleet's offloaded share and the server's queue over time.
* **tuning** (never graded): right before each policy's graded run, a real run of the same
  policy on the tuning seed 0 (half as long) calibrates its simulator
  (:mod:`splitcomp.fleet.calibration`; this machine's speed drifts over minutes); the fleet-aware
  policy's ``margin`` and ``retry_s`` are chosen in its calibrated simulator on seed 0. The graded
  fleets run the fleet's own seed (1).
* **sim**: the graded 16-device scenario in the calibrated simulator (the sim-vs-real error of
  the fleet's mean and p95 latency, for every policy run for real), and the 1,000-device fleet
  of ``conf/fleet/thousand.yaml`` (same offered load; its wall time).
* **frame path**: 16 MiB frames received by the frame path against a bare ``recv_into`` loop,
  in the same run, without and with MACs.

Everything goes into one MLflow run (experiment ``fleet``).

    flock /tmp/splitcomp-bench.lock python3 experiments/bench_fleet.py --quick --json /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from splitcomp.fleet.calibration import Calibration
from splitcomp.fleet.framepath import measure_frame_path
from splitcomp.fleet.metrics import BatchSpan, FleetFigures, fleet_figures, log_fleet
from splitcomp.fleet.real import HeadCache, run_real_fleet
from splitcomp.fleet.scenario import FleetSpec, device_envs, load_fleet
from splitcomp.fleet.sim import BatchServerModel, simulate_fleet
from splitcomp.fleet.workload import build_fleet_workload
from splitcomp.policy.base import Policy
from splitcomp.policy.dynamic import Dynamic
from splitcomp.policy.estimators import EwmaEstimator
from splitcomp.policy.fleet_aware import FleetAware
from splitcomp.policy.simple import DeviceOnly, ServerOnly
from splitcomp.profile.latency import LatencyModel
from splitcomp.records import RequestRecord
from splitcomp.runtime.server import ServerSettings
from splitcomp.track.tracker import start_run

MAX_BATCH, MAX_WAIT_S = 16, 0.002
DEVICE_ONLY_S, WIDTH, PROFILE_REPEATS = 0.086, 320, 15
TUNING_SEED = 0
# the fleet-aware policy's (margin, retry_s) candidates, chosen on the tuning seed
FLEET_AWARE_GRID = [(margin, retry) for margin in (0.1, 0.3) for retry in (0.0, 0.25, 0.5, 1.0)]


def policy_factories(fleet_aware: tuple[float, float] = (0.1, 0.5)) -> dict[str, Callable[[], Policy]]:
    margin, retry_s = fleet_aware
    return {"dynamic": Dynamic, "fleet_aware": lambda: FleetAware(margin=margin, retry_s=retry_s),
            "device_only": DeviceOnly, "server_only": ServerOnly}


def offload_share_std(records: list[list[RequestRecord]], bin_s: float = 1.0) -> float:
    """Std over 1-s bins of the share of the fleet's requests that offloaded: herding swings it."""
    starts = np.array([r.t_start for device in records for r in device])
    offloaded = np.array([r.bytes_up > 0 for device in records for r in device], dtype=float)
    if not len(starts):
        return float("nan")
    bins = (starts // bin_s).astype(int)
    shares = [offloaded[bins == b].mean() for b in np.unique(bins) if (bins == b).sum() >= 5]
    return float(np.std(shares)) if shares else float("nan")


def summary(figures: FleetFigures, records: list[list[RequestRecord]], batches: list[BatchSpan]) -> dict[str, Any]:
    offloaded = [r.bytes_up > 0 for device in records for r in device]
    return {**figures.scalars(), "offloaded_share": float(np.mean(offloaded)) if offloaded else 0.0,
            "offload_share_std": offload_share_std(records),
            "batch_size_max": max((b.requests for b in batches), default=0),
            "device_latency_ms_mean": [d.latency_ms_mean for d in figures.devices]}


def simulate(spec: FleetSpec, work: Any, make_policy: Callable[[], Policy],
             calibration: Calibration) -> tuple[FleetFigures, list, list, float]:
    server = BatchServerModel(MAX_BATCH, MAX_WAIT_S, timing=calibration.server, seed=spec.seed)
    envs = device_envs(spec, list(work.profiles.cuts), LatencyModel(work.profiles), make_policy, EwmaEstimator)
    started = time.perf_counter()
    records = simulate_fleet(envs, server, device_factors=calibration.device_factors)
    wall = time.perf_counter() - started
    batches = server.history()
    return fleet_figures(records, batches), records, batches, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="real runs of dynamic, fleet_aware and device_only only")
    parser.add_argument("--json", type=Path, help="write raw figures and targets here")
    parser.add_argument("--fleet", default="default", help="the real fleet (conf/fleet/NAME.yaml or a file)")
    parser.add_argument("--large", default="thousand", help="the simulated large fleet")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_fleet"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    spec, large = load_fleet(args.fleet), load_fleet(args.large)
    if spec.seed == TUNING_SEED:
        raise SystemExit(f"the graded fleet must not run the tuning seed {TUNING_SEED}; set seed in the fleet config.")
    result: dict[str, Any] = {"load_before": os.getloadavg()}

    frame = measure_frame_path(16 << 20, reps=10 if args.quick else 30)
    result["frame_path"] = {"bytes": frame.nbytes, "raw_gbps": frame.raw_gbps, "frame_gbps": frame.frame_gbps,
                            "mac_raw_gbps": frame.mac_raw_gbps, "mac_frame_gbps": frame.mac_frame_gbps,
                            "frame_over_raw": frame.frame_over_raw, "mac_frame_over_raw": frame.mac_frame_over_raw}

    work = build_fleet_workload(width=WIDTH, device_only_s=DEVICE_ONLY_S, repeats=PROFILE_REPEATS)
    model = LatencyModel(work.profiles)  # the policies see the profiles, on both runtimes
    result["profiles"] = [{"cut": c.name, "bytes_up": c.bytes_up, "head_ms": 1e3 * c.head_at(1),
                           "tail_ms": {b: 1e3 * t for b, t in c.tail_s.items()}} for c in work.profiles.cuts]
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(32)]
    cache = HeadCache(work.model, work.plan, images, [c.index for c in work.profiles.cuts])
    settings = ServerSettings(batching=True, max_batch=MAX_BATCH, max_wait_s=MAX_WAIT_S)

    def run_real(fleet: FleetSpec, name: str, make_policy: Callable[[], Policy]) -> Any:
        envs = device_envs(fleet, list(work.profiles.cuts), model, make_policy, EwmaEstimator)
        with tqdm(total=fleet.devices * fleet.requests, desc=f"real fleet, {name}, seed {fleet.seed}",
                  unit="req") as bar:
            return run_real_fleet(envs, work.model, work.plan, work.example, work.fingerprint, work.codec, images,
                                  settings, cache=cache, progress=bar.update)

    # Each policy's simulator is calibrated on a real run of that policy on the tuning seed, run
    # right before its graded run: this machine's speed drifts by tens of percent over minutes as
    # other work comes and goes, so a calibration taken long before misstates the server.
    tuning = dataclasses.replace(spec, seed=TUNING_SEED)
    short = dataclasses.replace(tuning, requests=max(1, spec.requests // 2))
    real_policies = ["dynamic", "fleet_aware", "device_only"] + ([] if args.quick else ["server_only"])
    calibrations: dict[str, Calibration] = {}
    real, real_figures, real_batches = {}, {}, {}
    grid: dict[tuple[float, float], float] = {}
    chosen = (0.1, 0.5)
    for name in real_policies:
        calibration_run = run_real(short, name, policy_factories(chosen)[name])
        calibrations[name] = Calibration.from_runs(work.profiles.cuts,
                                                   [(calibration_run.records, calibration_run.batches)])
        if name == "fleet_aware":  # its parameters: chosen in the calibrated simulator, on the tuning seed
            for params in tqdm(FLEET_AWARE_GRID, desc="tuning fleet_aware in the simulator, seed 0"):
                figures, *_ = simulate(tuning, work, policy_factories(params)["fleet_aware"], calibrations[name])
                grid[params] = figures.latency_ms_p95
            chosen = min(grid, key=grid.__getitem__)
        run = run_real(spec, name, policy_factories(chosen)[name])
        figures = fleet_figures(run.records, run.batches, run.wall_s)
        real[name] = {**summary(figures, run.records, run.batches), "wall_s": run.wall_s}
        real_figures[name], real_batches[name] = figures, run.batches
    policies = policy_factories(chosen)
    result["tuning"] = {"seed": TUNING_SEED, "calibration_requests": short.requests,
                        "calibration": {name: c.summary() for name, c in calibrations.items()},
                        "chosen": {"margin": chosen[0], "retry_s": chosen[1]},
                        "grid_p95_ms": [{"margin": m, "retry_s": r, "p95_ms": v} for (m, r), v in grid.items()]}

    sim16, sim16_figures, sim16_batches = {}, {}, {}
    sim1000, sim1000_figures = {}, {}
    server_model = calibrations["fleet_aware"]  # the run that offloaded the most, for policies not run for real
    for name, make_policy in tqdm(policies.items(), desc="simulated fleets"):
        figures, records, batches, wall = simulate(spec, work, make_policy, calibrations.get(name, server_model))
        sim16[name] = {**summary(figures, records, batches), "wall_s": wall}
        sim16_figures[name], sim16_batches[name] = figures, batches
        figures, records, batches, wall = simulate(large, work, make_policy, server_model)
        sim1000[name] = {**summary(figures, records, batches), "wall_s": wall}
        sim1000_figures[name] = figures
        del records
    errors = {p: {"mean": abs(sim16[p]["latency_ms_mean"] - real[p]["latency_ms_mean"]) / real[p]["latency_ms_mean"],
                  "p95": abs(sim16[p]["latency_ms_p95"] - real[p]["latency_ms_p95"]) / real[p]["latency_ms_p95"]}
              for p in real}
    result.update(real=real, sim16=sim16, sim1000=sim1000, sim_vs_real_error=errors, load_after=os.getloadavg(),
                  fleet=vars(spec) | {"traces": list(spec.traces)}, large_fleet={"devices": large.devices,
                                                                                "requests": large.requests})
    result["targets"] = [
        {"name": "fleet_aware_p95_over_dynamic", "op": "<=", "target": 0.9,
         "value": real["fleet_aware"]["latency_ms_p95"] / real["dynamic"]["latency_ms_p95"]},
        {"name": "worst_device_over_fleet_mean", "op": "<=", "target": 2.0,
         "value": real["fleet_aware"]["worst_device_over_fleet_mean"]},
        {"name": "sim_1000_devices_wall_s", "op": "<=", "target": 60.0, "value": sim1000["dynamic"]["wall_s"]},
        {"name": "fleet_sim_vs_real_p95_error", "op": "<=", "target": 0.10,
         "value": max(max(e.values()) for e in errors.values())},
        {"name": "frame_path_over_raw_socket", "op": ">=", "target": 0.7, "value": frame.frame_over_raw},
    ]
    print_table(result)
    with start_run(experiment="fleet", run_name="bench_fleet") as tracker:
        tracker.log_params({"devices": spec.devices, "large_devices": large.devices, "rate_hz": spec.rate_hz,
                            "requests": spec.requests, "max_batch": MAX_BATCH, "max_wait_s": MAX_WAIT_S,
                            "device_only_s": DEVICE_ONLY_S, "seed": spec.seed, "tuning_seed": TUNING_SEED,
                            "fleet_aware_margin": chosen[0], "fleet_aware_retry_s": chosen[1], "quick": args.quick})
        log_fleet(tracker, real_figures, real_batches, args.out, prefix="real/")
        log_fleet(tracker, sim16_figures, sim16_batches, args.out, prefix="sim16/")
        log_fleet(tracker, sim1000_figures, {}, args.out, prefix="sim1000/")
        tracker.log_metrics({t["name"]: t["value"] for t in result["targets"]})
        tracker.log_text(json.dumps(result, indent=1, default=float), "bench_fleet.json")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'fleet':8s} {'policy':12s} {'mean ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'worst/mean':>10s} "
          f"{'fallbacks':>9s} {'offloaded':>9s} {'offload swing':>13s} {'batch':>6s} {'max':>4s} {'wall s':>7s}")
    for fleet in ("real", "sim16", "sim1000"):
        for policy, r in result[fleet].items():
            print(f"{fleet:8s} {policy:12s} {r['latency_ms_mean']:8.1f} {r['latency_ms_p95']:8.1f} "
                  f"{r['latency_ms_p99']:8.1f} {r['worst_device_over_fleet_mean']:10.2f} {r['fallbacks']:9.0f} "
                  f"{r['offloaded_share']:9.2f} {r['offload_share_std']:13.3f} {r['batch_size_mean']:6.2f} "
                  f"{r['batch_size_max']:4d} {r['wall_s']:7.1f}")
    fp = result["frame_path"]
    print(f"\n16 MiB frames received, Gbit/s: bare socket {fp['raw_gbps']:.2f}, frame path {fp['frame_gbps']:.2f} "
          f"({fp['frame_over_raw']:.2f}x); with MAC: bare {fp['mac_raw_gbps']:.2f}, frame path "
          f"{fp['mac_frame_gbps']:.2f} ({fp['mac_frame_over_raw']:.2f}x)")
    tuning = result["tuning"]
    print(f"\nfleet_aware chosen on seed {tuning['seed']} in the calibrated simulator: {tuning['chosen']}; "
          "sim-vs-real error: " + ", ".join(f"{p} mean {e['mean']:.3f} p95 {e['p95']:.3f}"
                                            for p, e in result["sim_vs_real_error"].items()))
    print("\ntargets:")
    for t in result["targets"]:
        ok = t["value"] <= t["target"] if t["op"] == "<=" else t["value"] >= t["target"]
        print(f"  {t['name']:32s} {t['value']:8.3f} {t['op']} {t['target']:<6g} {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
