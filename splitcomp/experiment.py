"""One experiment from a composed config: build the parts, run the policy (and the policies to
compare with) on the same scenario, and log everything to MLflow."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splitcomp.configs import config_dir
from splitcomp.errors import ConfigError
from splitcomp.link.frame_bytes import FrameBytes, request_overhead, wire_frame_bytes
from splitcomp.link.shaping import ScenarioClock
from splitcomp.loop import RunEnv
from splitcomp.profile import get_profiles
from splitcomp.profile.latency import LatencyModel
from splitcomp.profile.timing import pin_to_cores
from splitcomp.redact import save_private_config
from splitcomp.runtime.security import auth_secret
from splitcomp.runtime.session import launch_server, open_socket_session
from splitcomp.tasks.build import Workload, build_workload
from splitcomp.track import start_run_from_config
from splitcomp.track.plots import log_run_plots
from splitcomp.track.summary import summarize

log = logging.getLogger("splitcomp")


@dataclass
class Scenario:
    """Everything that is the same for every policy compared in one experiment."""

    work: Workload
    profiles: Any
    uplink: Any
    downlink: Any
    load_model: Any
    link: Any
    dataset: Any
    n_requests: int
    frames: FrameBytes


def frame_bytes(work: Workload, profiles: Any, secret: bool) -> FrameBytes:
    """The wire format's frame bytes, exact for every candidate cut: each head's output on the
    example input, encoded as a request frame (plain values and multi-tensor cuts have longer
    headers than one tensor)."""
    per_cut = {}
    with torch.inference_mode():
        for cut in profiles.cuts:
            if cut.is_device_only:
                continue
            head, _ = work.plan.split(cut.name)
            values = head(work.example_input)
            values = values if isinstance(values, tuple) else (values,)
            per_cut[cut.name] = request_overhead(values, work.codec, cut.bytes_up, secret)
    return wire_frame_bytes(secret).with_cuts(per_cut)


def build_scenario(cfg: DictConfig, link: Any, needs_images: bool = True) -> Scenario:
    """Dataset, workload, profiles, channel traces (bound to ``link``) and server-load model."""
    dataset = instantiate(cfg.dataset)
    work = build_workload(cfg, dataset)
    n_requests = int(cfg.get("requests") or len(dataset))
    if needs_images:  # each real request classifies one image; the simulator needs none
        n_requests = min(n_requests, len(dataset))
    if n_requests <= 0:
        raise ConfigError("the run has no requests: the dataset is empty or dataset.limit is 0")
    profiles = get_profiles(work.model, work.plan, work.example_input, work.codec, cfg.device, cfg.server,
                            cfg.profile)
    uplink = instantiate(cfg.channel)
    downlink = instantiate(cfg.downlink) if cfg.get("downlink") else None
    link.bind(uplink, downlink)
    frames = frame_bytes(work, profiles, secret=auth_secret(cfg.server) is not None)
    return Scenario(work, profiles, uplink, link.downlink_trace, instantiate(cfg.server_load), link, dataset,
                    n_requests, frames)


def make_env(cfg: DictConfig, scenario: Scenario, policy_cfg: Any) -> RunEnv:
    """Fresh policy, estimator and arrivals on the shared scenario, for one policy's run.

    The true RTT is the link's (twice its one-way delay) on both runtimes: the real link adds
    that delay and ignores RTT columns of traces, so the simulator does the same."""
    delay = scenario.link.one_way_delay_s
    latency_model = LatencyModel(scenario.profiles, rtt_s=float(cfg.link.get("rtt_s", 0.0) or 0.0),
                                 one_way_delay_s=delay, frames=scenario.frames)
    return RunEnv(candidates=list(scenario.profiles.cuts), latency_model=latency_model,
                  policy=instantiate(policy_cfg), estimator=instantiate(cfg.estimator),
                  arrivals=instantiate(cfg.arrivals), uplink=scenario.uplink, downlink=scenario.downlink,
                  load_model=scenario.load_model, n_requests=scenario.n_requests, seed=int(cfg.seed),
                  rtt_s=2 * delay, timeout_s=float(cfg.link.get("max_transfer_s") or 5.0))


def policy_config(name: str) -> Any:
    """The config of policy ``name`` from conf/policy/NAME.yaml (for the comparison runs)."""
    path = config_dir() / "policy" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"compare_with names an unknown policy {name!r}; see conf/policy/ for the options")
    return OmegaConf.load(path)


def policies_to_run(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The run's policy (its name first) and those of ``compare_with``, by name."""
    main_name = str(getattr(instantiate(cfg.policy), "name", "policy"))
    policies = {main_name: cfg.policy}
    for name in cfg.get("compare_with") or []:
        policies.setdefault(str(name), policy_config(str(name)))
    return main_name, policies


def run_experiment(cfg: DictConfig, out_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run ``cfg.policy`` (and ``cfg.compare_with``) and log to MLflow; returns the summary."""
    started = time.perf_counter()
    torch.set_num_threads(int(cfg.device.threads))  # this process is the end device
    pin_to_cores(cfg.device.get("pin_cores"))
    runtime = instantiate(cfg.runtime)
    main_name, policies = policies_to_run(cfg)
    tracking = cfg.tracking
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        link = instantiate(cfg.link)
        clock = ScenarioClock()
        # device side first (a missing head is fitted once; profiles are timed on a quiet machine),
        # then the server process, which loads its model while the MLflow run is being opened
        scenario = build_scenario(cfg, link, needs_images=runtime.needs_sockets)
        server = launch_server(cfg, link, clock, stack, out_dir) if runtime.needs_sockets else None
        tracker = stack.enter_context(start_run_from_config(tracking, config=config,
                                                            run_name=tracking.get("run_name")))
        tracker.log_artifact(save_private_config(cfg, out_dir / "config.yaml"))
        if runtime.needs_sockets:
            runtime.attach(open_socket_session(cfg, scenario, server, clock))
        try:
            for name, policy_cfg in policies.items():
                records = runtime.run(make_env(cfg, scenario, policy_cfg))
                results[name] = {"records": records, "metrics": summarize(records)}
        except BaseException:  # Ctrl-C or a crash: keep what was measured, the run ends KILLED/FAILED
            log_partial(tracker, runtime, results)
            raise
        main = results[main_name]
        log_main_run(tracker, main, scenario, out_dir)
        comparison = log_comparison(tracker, results, main_name, out_dir)
        tracker.log_metrics({"wall_s": time.perf_counter() - started})
        print_summary(tracker, main, comparison, tracking)
    return {"metrics": main["metrics"], "comparison": comparison, "run_id": tracker.run_id}


def log_partial(tracker: Any, runtime: Any, results: dict[str, dict[str, Any]]) -> None:
    """Log the records gathered before an interruption (finished policies and the one running)."""
    for name, result in results.items():
        tracker.log_records(result["records"], f"records_{name}.csv")
    partial = list(getattr(runtime, "records", []) or [])
    if partial:
        tracker.log_records(partial, "records_partial.csv")
        tracker.log_metrics({f"partial_{k}": v for k, v in summarize(partial).items()})


def log_main_run(tracker: Any, main: dict[str, Any], scenario: Scenario, out_dir: Path) -> None:
    records = main["records"]
    tracker.log_metrics(main["metrics"])
    tracker.log_records(records, "records.csv")
    for key in ("rate_trace_bps", "rate_estimate_bps", "server_load", "cut", "predicted_latency_s", "latency_s"):
        values = [float(r[key]) for r in records if r.get(key) is not None]
        if values and len(values) == len(records):
            tracker.log_series(key, values)
    log_run_plots(tracker, records, scenario.uplink, out_dir)


def log_comparison(tracker: Any, results: dict[str, dict[str, Any]], main_name: str, out_dir: Path) -> list[dict]:
    """One row per policy on the same scenario; latency ratios to the oracle when it ran."""
    rows = []
    oracle = results.get("oracle", {}).get("metrics", {}).get("latency_ms_mean")
    for name, result in results.items():
        m = result["metrics"]
        row = {"policy": name, "requests": m.get("requests"), "latency_ms_mean": m.get("latency_ms_mean"),
               "latency_ms_p95": m.get("latency_ms_p95"), "agreement": m.get("agreement"),
               "bytes_sent_mean": m.get("bytes_sent_mean"),
               "cut_shares": {k.removeprefix("share_cut_"): v for k, v in m.items() if k.startswith("share_cut_")}}
        if oracle:
            row["mean_over_oracle"] = m.get("latency_ms_mean", float("nan")) / oracle
        rows.append(row)
        if name != main_name:
            tracker.log_metrics({f"{name}_latency_ms_mean": m.get("latency_ms_mean"),
                                 f"{name}_latency_ms_p95": m.get("latency_ms_p95")})
    if len(rows) > 1:
        tracker.log_records(rows, "comparison.csv")
        from splitcomp.track.plots import log_latency_cdf

        log_latency_cdf(tracker, {n: r["records"] for n, r in results.items()}, out_dir)
    return rows


def print_summary(tracker: Any, main: dict[str, Any], comparison: list[dict], tracking: Any) -> None:
    m = main["metrics"]
    if len(comparison) > 1:
        print("\npolicy          mean ms   p95 ms  x oracle  agreement")
        for row in comparison:
            ratio = row.get("mean_over_oracle")
            print(f"{row['policy']:<14} {row['latency_ms_mean']:8.1f} {row['latency_ms_p95']:8.1f} "
                  f"{'' if ratio is None else f'{ratio:8.2f}':>9}  {row.get('agreement') if row.get('agreement') is not None else '-'}")
        print_cut_shares(comparison)
    accuracy = m.get("accuracy")
    print(f"\nrun {tracker.run_id}: {int(m['requests'])} requests, latency mean {m['latency_ms_mean']:.1f} ms "
          f"(p95 {m['latency_ms_p95']:.1f}), agreement {m.get('agreement', float('nan')):.3f}"
          + (f", accuracy {accuracy:.3f}" if accuracy is not None else "")
          + f"; view it with: mlflow ui --backend-store-uri {tracking.uri}")


def print_cut_shares(comparison: list[dict]) -> None:
    """The share of each policy's requests per cut (in the candidates' order as first seen)."""
    cuts = list(dict.fromkeys(cut for row in comparison for cut in row.get("cut_shares", {})))
    print("\nshare of requests per cut")
    print(f"{'policy':<14} " + " ".join(f"{cut[:12]:>12}" for cut in cuts))
    for row in comparison:
        shares = row.get("cut_shares", {})
        print(f"{row['policy']:<14} " + " ".join(f"{shares.get(cut, 0.0):12.2f}" for cut in cuts))
