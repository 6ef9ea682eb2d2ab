"""Fleet benchmark: many devices on one batching edge server, on the real runtime and in the simulator.

* **real**: the fleet of ``conf/fleet/default.yaml`` (16 emulated devices on real traces, 60 s,
  Poisson arrivals) on one in-process batching edge server over loopback, once per policy
  (``dynamic``, ``fleet_aware``, ``device_only``; ``server_only`` too without ``--quick``).
  Herding shows as the swing of the fleet's offloaded share from one second to the next
  (``offload_share_std``: devices leaving and returning together) and as starved devices.
* **sim**: the same 16-device scenario in the simulator, with the batching server modelled (the
  sim-vs-real error of the fleet's mean and p95 latency), and the 1,000-device fleet of
  ``conf/fleet/thousand.yaml`` (same offered load; its wall time).
* **frame path**: 16 MiB frames received by the frame path against a bare ``recv_into`` loop,
  in the same run, without and with MACs.

The fleet-aware policy's margin was chosen on seed 0 of the fleet (see conf/policy/fleet_aware.yaml);
the fleets here run seed 1. Everything goes into one MLflow run (experiment ``fleet``).

    flock /tmp/splitcomp-bench.lock python3 experiments/bench_fleet.py --quick --json /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from splitcomp.fleet.framepath import measure_frame_path
from splitcomp.fleet.metrics import BatchSpan, FleetFigures, fleet_figures, log_fleet
from splitcomp.fleet.real import HeadCache, run_real_fleet
from splitcomp.fleet.scenario import FleetSpec, device_envs, load_fleet
from splitcomp.fleet.sim import BatchServerModel, simulate_fleet
from splitcomp.fleet.workload import build_fleet_workload
from splitcomp.policy.dynamic import Dynamic
from splitcomp.policy.estimators import EwmaEstimator
from splitcomp.policy.fleet_aware import FleetAware
from splitcomp.policy.simple import DeviceOnly, ServerOnly
from splitcomp.profile.latency import LatencyModel
from splitcomp.records import RequestRecord
from splitcomp.runtime.server import ServerSettings
from splitcomp.track.tracker import start_run

POLICIES = {"dynamic": Dynamic, "fleet_aware": FleetAware, "device_only": DeviceOnly, "server_only": ServerOnly}
MAX_BATCH, MAX_WAIT_S = 16, 0.002
DEVICE_SLOWDOWN, WIDTH = 8.0, 320
MIN_HEAD_S = 0.005


def offload_share_std(records: list[list[RequestRecord]], bin_s: float = 1.0) -> float:
    """Std over 1-s bins of the share of the fleet's requests that offloaded: herding swings it."""
    starts = np.array([r.t_start for device in records for r in device])
    offloaded = np.array([r.bytes_up > 0 for device in records for r in device], dtype=float)
    if not len(starts):
        return float("nan")
    bins = (starts // bin_s).astype(int)
    shares = [offloaded[bins == b].mean() for b in np.unique(bins) if (bins == b).sum() >= 5]
    return float(np.std(shares)) if shares else float("nan")


def summary(figures: FleetFigures, records: list[list[RequestRecord]]) -> dict[str, Any]:
    return {**figures.scalars(), "offload_share_std": offload_share_std(records),
            "device_latency_ms_mean": [d.latency_ms_mean for d in figures.devices]}


@dataclass
class Calibration:
    """What the simulator takes from a real calibration run (another seed than the one graded):
    ratios of real to profiled compute on the device and the server, and the server-side
    handling and answer time beyond the tail (the latency model's ``overhead_s``)."""

    device_factors: list[float] = field(default_factory=list)
    server_factors: list[float] = field(default_factory=list)
    overhead_s: float = 0.0

    @classmethod
    def from_run(cls, work: Any, records: list[list[RequestRecord]], batches: list[BatchSpan]) -> Calibration:
        cuts = {c.index: c for c in work.profiles.cuts}
        flat = [r for device in records for r in device if not r.fallback]
        # heads of a few milliseconds at least: below, the ratio measures the sleep's overshoot
        device = [r.device_s / cuts[r.cut].head_at(1) for r in flat if cuts[r.cut].head_at(1) >= MIN_HEAD_S]
        server = [b.seconds / cuts[b.cut].tail_at(b.requests) for b in batches
                  if b.cut in cuts and cuts[b.cut].tail_at(b.requests) > 0]
        overhead = [r.overhead_s + r.downlink_s for r in flat if r.bytes_up > 0]
        return cls(sorted(device), sorted(server), float(np.median(overhead)) if overhead else 0.0)

    def summary(self) -> dict[str, float]:
        def median(values: list[float]) -> float:
            return float(np.median(values)) if values else float("nan")
        return {"device_factor_median": median(self.device_factors),
                "server_factor_median": median(self.server_factors), "overhead_ms": 1e3 * self.overhead_s}


def simulate(spec: FleetSpec, work: Any, latency_model: LatencyModel, policy: str,
             calibration: Calibration) -> tuple[Any, list, list, float]:
    server = BatchServerModel(MAX_BATCH, MAX_WAIT_S)
    envs = device_envs(spec, list(work.profiles.cuts), latency_model, POLICIES[policy], EwmaEstimator)
    started = time.perf_counter()
    records = simulate_fleet(envs, server, device_factors=calibration.device_factors,
                             server_factors=calibration.server_factors)
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
    result: dict[str, Any] = {"load_before": os.getloadavg()}

    frame = measure_frame_path(16 << 20, reps=10 if args.quick else 30)
    result["frame_path"] = {"bytes": frame.nbytes, "raw_gbps": frame.raw_gbps, "frame_gbps": frame.frame_gbps,
                            "mac_raw_gbps": frame.mac_raw_gbps, "mac_frame_gbps": frame.mac_frame_gbps,
                            "frame_over_raw": frame.frame_over_raw, "mac_frame_over_raw": frame.mac_frame_over_raw}

    work = build_fleet_workload(device_slowdown=DEVICE_SLOWDOWN, width=WIDTH)
    model = LatencyModel(work.profiles)
    result["profiles"] = [{"cut": c.name, "bytes_up": c.bytes_up, "head_ms": 1e3 * c.head_at(1),
                           "tail_ms": {b: 1e3 * t for b, t in c.tail_s.items()}} for c in work.profiles.cuts]
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(32)]
    cache = HeadCache(work.model, work.plan, images, [c.index for c in work.profiles.cuts])
    real_policies = ["dynamic", "fleet_aware", "device_only"] + ([] if args.quick else ["server_only"])
    settings = ServerSettings(batching=True, max_batch=MAX_BATCH, max_wait_s=MAX_WAIT_S)


    def run_real(fleet: FleetSpec, policy: str, latency_model: LatencyModel) -> Any:
        envs = device_envs(fleet, list(work.profiles.cuts), latency_model, POLICIES[policy], EwmaEstimator)
        with tqdm(total=fleet.devices * fleet.requests, desc=f"real fleet, {policy}, seed {fleet.seed}",
                  unit="req") as bar:
            return run_real_fleet(envs, work.model, work.plan, work.example, work.fingerprint, work.codec, images,
                                  settings, cache=cache, progress=bar.update)

    tuning = dataclasses.replace(spec, seed=0, requests=max(1, spec.requests // 2))
    calibration_run = run_real(tuning, "dynamic", model)
    calibration = Calibration.from_run(work, calibration_run.records, calibration_run.batches)
    result["calibration"] = {**calibration.summary(), "seed": tuning.seed, "requests": tuning.requests}
    model = LatencyModel(work.profiles, overhead_s=calibration.overhead_s)  # both runtimes, every policy

    real, real_figures, real_batches = {}, {}, {}
    for policy in real_policies:
        run = run_real(spec, policy, model)
        figures = fleet_figures(run.records, run.batches, run.wall_s)
        real[policy] = {**summary(figures, run.records), "wall_s": run.wall_s}
        real_figures[policy], real_batches[policy] = figures, run.batches

    sim16, sim16_figures, sim16_batches = {}, {}, {}
    sim1000, sim1000_figures = {}, {}
    for policy in POLICIES:
        figures, records, batches, wall = simulate(spec, work, model, policy, calibration)
        sim16[policy] = {**summary(figures, records), "wall_s": wall}
        sim16_figures[policy], sim16_batches[policy] = figures, batches
        figures, records, _, wall = simulate(large, work, model, policy, calibration)
        sim1000[policy] = {**summary(figures, records), "wall_s": wall}
        sim1000_figures[policy] = figures
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
                            "seed": spec.seed, "quick": args.quick})
        log_fleet(tracker, real_figures, real_batches, args.out, prefix="real/")
        log_fleet(tracker, sim16_figures, sim16_batches, args.out, prefix="sim16/")
        log_fleet(tracker, sim1000_figures, {}, args.out, prefix="sim1000/")
        tracker.log_metrics({t["name"]: t["value"] for t in result["targets"]})
        tracker.log_text(json.dumps(result, indent=1, default=float), "bench_fleet.json")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'fleet':8s} {'policy':12s} {'mean ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'worst/mean':>10s} "
          f"{'fallbacks':>9s} {'offload swing':>13s} {'batch':>6s} {'wall s':>7s}")
    for fleet in ("real", "sim16", "sim1000"):
        for policy, r in result[fleet].items():
            print(f"{fleet:8s} {policy:12s} {r['latency_ms_mean']:8.1f} {r['latency_ms_p95']:8.1f} "
                  f"{r['latency_ms_p99']:8.1f} {r['worst_device_over_fleet_mean']:10.2f} {r['fallbacks']:9.0f} "
                  f"{r['offload_share_std']:13.3f} {r['batch_size_mean']:6.2f} {r['wall_s']:7.1f}")
    fp = result["frame_path"]
    print(f"\n16 MiB frames received, Gbit/s: bare socket {fp['raw_gbps']:.2f}, frame path {fp['frame_gbps']:.2f} "
          f"({fp['frame_over_raw']:.2f}x); with MAC: bare {fp['mac_raw_gbps']:.2f}, frame path "
          f"{fp['mac_frame_gbps']:.2f} ({fp['mac_frame_over_raw']:.2f}x)")
    print("\ntargets:")
    for t in result["targets"]:
        ok = t["value"] <= t["target"] if t["op"] == "<=" else t["value"] >= t["target"]
        print(f"  {t['name']:32s} {t['value']:8.3f} {t['op']} {t['target']:<6g} {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
