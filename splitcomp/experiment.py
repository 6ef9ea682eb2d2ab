"""One experiment from a composed config: build the parts, run the policy (and the policies to
compare with) on the same scenario, and log everything to MLflow."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from splitcomp.build import ExperimentSession, Scenario, make_env, policy_config
from splitcomp.records import RequestRecord
from splitcomp.redact import save_private_config
from splitcomp.track import start_run_from_config
from splitcomp.track.plots import log_latency_cdf, log_run_plots
from splitcomp.track.summary import summarize

log = logging.getLogger("splitcomp")


@dataclass
class PolicyResult:
    """One policy's run on the experiment's scenario: its records and their summary metrics."""

    records: list[RequestRecord]
    metrics: dict[str, float]


@dataclass
class ExperimentResult:
    """What ``run_experiment`` returns: the main policy's metrics, one comparison row per policy
    (as logged in ``comparison.csv``) and the MLflow run's id."""

    metrics: dict[str, float]
    comparison: list[dict[str, Any]]
    run_id: str


def policies_to_run(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The run's policy (its name first) and those of ``compare_with``, by name."""
    main_name = str(getattr(instantiate(cfg.policy), "name", "policy"))
    policies = {main_name: cfg.policy}
    for name in cfg.get("compare_with") or []:
        policies.setdefault(str(name), policy_config(str(name)))
    return main_name, policies


def run_experiment(cfg: DictConfig, out_dir: Path, config: dict[str, Any]) -> ExperimentResult:
    """Run ``cfg.policy`` (and ``cfg.compare_with``) and log to MLflow; returns the summary."""
    started = time.perf_counter()
    main_name, policies = policies_to_run(cfg)
    tracking = cfg.tracking
    results: dict[str, PolicyResult] = {}
    with ExitStack() as stack:
        session = stack.enter_context(ExperimentSession(cfg, out_dir))
        # the server process loads its model while the MLflow run is being opened
        tracker = stack.enter_context(start_run_from_config(tracking, config=config,
                                                            run_name=tracking.get("run_name")))
        tracker.log_artifact(save_private_config(cfg, out_dir / "config.yaml"))
        session.connect()
        try:
            for name, policy_cfg in policies.items():
                records = session.run_env(make_env(cfg, session.scenario, policy_cfg))
                results[name] = PolicyResult(records, summarize(records))
        except BaseException:  # Ctrl-C or a crash: keep what was measured, the run ends KILLED/FAILED
            log_partial(tracker, session.runtime, results)
            raise
        main = results[main_name]
        log_main_run(tracker, main, session.scenario, out_dir)
        comparison = log_comparison(tracker, results, main_name, out_dir, split_cuts(session.scenario))
        tracker.log_metrics({"wall_s": time.perf_counter() - started})
        print_summary(tracker, main, comparison, tracking)
    return ExperimentResult(main.metrics, comparison, tracker.run_id)


def log_partial(tracker: Any, runtime: Any, results: dict[str, PolicyResult]) -> None:
    """Log the records gathered before an interruption (finished policies and the one running)."""
    for name, result in results.items():
        tracker.log_records(result.records, f"records_{name}.csv")
    partial = list(getattr(runtime, "records", []) or [])
    if partial:
        tracker.log_records(partial, "records_partial.csv")
        tracker.log_metrics({f"partial_{k}": v for k, v in summarize(partial).items()})


def log_main_run(tracker: Any, main: PolicyResult, scenario: Scenario, out_dir: Path) -> None:
    records = main.records
    if scenario.profiles.measurement is not None:  # how busy the machine was while profiling, the check's verdict
        tracker.log_params(scenario.profiles.measurement.as_params())
    tracker.log_metrics(main.metrics)
    tracker.log_records(records, "records.csv")
    for key in ("rate_trace_bps", "rate_estimate_bps", "server_load", "cut", "predicted_latency_s", "latency_s"):
        values = [float(r[key]) for r in records if r.get(key) is not None]
        if values and len(values) == len(records):
            tracker.log_series(key, values)
    log_run_plots(tracker, records, scenario.uplink, out_dir)


def split_cuts(scenario: Scenario) -> set[str]:
    """The names of the candidate cuts that split the model: neither full offloading nor device-only."""
    return {c.name for c in scenario.profiles.cuts if not (c.is_full_offload or c.is_device_only)}


def log_comparison(tracker: Any, results: dict[str, PolicyResult], main_name: str,
                   out_dir: Path, splits: Collection[str] = ()) -> list[dict[str, Any]]:
    """One row per policy on the same scenario; latency ratios to the oracle when it ran, and the
    share of requests split at a natural bottleneck (at one of ``splits``)."""
    rows = []
    oracle = results["oracle"].metrics.get("latency_ms_mean") if "oracle" in results else None
    for name, result in results.items():
        m = result.metrics
        row = {"policy": name, "requests": m.get("requests"), "latency_ms_mean": m.get("latency_ms_mean"),
               "latency_ms_p95": m.get("latency_ms_p95"), "agreement": m.get("agreement"),
               "bytes_sent_mean": m.get("bytes_sent_mean"),
               "cut_shares": {k.removeprefix("share_cut_"): v for k, v in m.items() if k.startswith("share_cut_")}}
        row["split_share"] = sum(v for k, v in row["cut_shares"].items() if k in splits)
        tracker.log_metrics({"share_split" if name == main_name else f"{name}_share_split": row["split_share"]})
        if oracle:
            row["mean_over_oracle"] = m.get("latency_ms_mean", float("nan")) / oracle
        rows.append(row)
        if name != main_name:
            tracker.log_metrics({f"{name}_latency_ms_mean": m.get("latency_ms_mean"),
                                 f"{name}_latency_ms_p95": m.get("latency_ms_p95")})
    if len(rows) > 1:
        tracker.log_records(rows, "comparison.csv")
        log_latency_cdf(tracker, {n: r.records for n, r in results.items()}, out_dir)
    return rows


def print_summary(tracker: Any, main: PolicyResult, comparison: list[dict[str, Any]], tracking: Any) -> None:
    m = main.metrics
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
    """The share of each policy's requests per cut (in the candidates' order as first seen), and
    the share split at a natural bottleneck (neither full offloading nor device-only)."""
    cuts = list(dict.fromkeys(cut for row in comparison for cut in row.get("cut_shares", {})))
    print("\nshare of requests per cut")
    print(f"{'policy':<14} " + " ".join(f"{cut[:12]:>12}" for cut in cuts) + f" {'split':>8}")
    for row in comparison:
        shares = row.get("cut_shares", {})
        print(f"{row['policy']:<14} " + " ".join(f"{shares.get(cut, 0.0):12.2f}" for cut in cuts)
              + f" {row.get('split_share', 0.0):8.2f}")
