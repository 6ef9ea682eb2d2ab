"""Real-socket benchmark runs: one edge-server process per scenario, several policies on it.

:func:`socket_bench` composes a config (the same groups as ``splitcomp-run``), profiles and builds
the scenario, launches the server process, and gives a :class:`SocketBench` whose
:meth:`SocketBench.run` serves one policy and returns its records, without MLflow. Every run
starts its scenario clock at 0, so all policies see the same part of the channel trace and
the server load. :func:`run_policies` is the socket part of ``experiments/bench_policies.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splitcomp.experiment import Scenario, build_scenario, make_env, policy_config
from splitcomp.link.shaping import ScenarioClock
from splitcomp.loop import RunEnv, run_requests
from splitcomp.profile.timing import pin_to_cores
from splitcomp.records import RequestRecord
from splitcomp.runtime.session import SocketSession, launch_server, open_socket_session
from splitcomp.sim import Factors, SimBackend
from splitcomp.tasks.common import CONF_DIR

ROOT = Path(CONF_DIR).parent
TRACES_DIR = ROOT / ".." / "shared" / "traces"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The resolved run config for ``overrides`` (as given to ``splitcomp-run``)."""
    os.environ.setdefault("SPLITCOMP_TRACES", str(TRACES_DIR.resolve()))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@dataclass
class SocketBench:
    """A live server process and the scenario built for it."""

    cfg: DictConfig
    scenario: Scenario
    session: SocketSession
    runtime: Any

    def env(self, policy: str | DictConfig, estimator: str | None = None, requests: int | None = None) -> RunEnv:
        """The run environment of one policy (a conf/policy name or a policy config) on this
        scenario; ``estimator`` names a conf/estimator option to use instead of the config's;
        ``requests`` serves only that many of the scenario's requests."""
        cfg = self.cfg
        if estimator is not None:
            cfg = cfg.copy()
            cfg.estimator = OmegaConf.load(Path(CONF_DIR) / "estimator" / f"{estimator}.yaml")
        policy_cfg = policy_config(policy) if isinstance(policy, str) else policy
        env = make_env(cfg, self.scenario, policy_cfg)
        return env if requests is None else dataclasses.replace(env, n_requests=min(requests, env.n_requests))

    def run(self, policy: str | DictConfig, estimator: str | None = None,
            requests: int | None = None) -> list[RequestRecord]:
        """Records of one policy on this scenario, on the real runtime (see :meth:`env`)."""
        # A fresh clock per run: scenario time starts at 0 for every policy (the session only
        # moves the clock's origin, which the server sees but the device's own clock does not).
        self.session.clock = ScenarioClock()
        return self.runtime.run(self.env(policy, estimator, requests))

    def simulate(self, policy: str | DictConfig, estimator: str | None = None, device_factors: Factors = (),
                 server_factors: Factors = (), **sim_options: Any) -> list[RequestRecord]:
        """Records of the same run in the simulator (``sim_options``: its ``noise`` and
        ``client_share``, the simulator's defaults otherwise; the factors: see ``SimBackend``)."""
        env = self.env(policy, estimator)
        env = dataclasses.replace(env, sim_options={"noise": None, "client_share": 0.5, **env.sim_options,
                                                    **sim_options})
        backend = SimBackend(env, env.sim_options["noise"], device_factors, server_factors)
        return run_requests(env, backend)


@contextlib.contextmanager
def socket_bench(overrides: Sequence[str], out_dir: Path | None = None) -> Iterator[SocketBench]:
    """Compose ``overrides``, profile, launch the server process and yield a :class:`SocketBench`.
    The server and the link are torn down on exit. Relative paths in the config (checkpoints,
    profile cache, traces) are taken from the repository root."""
    cfg = compose_config(["runtime=socket", "runtime.progress=false", *overrides])
    with ExitStack() as stack:
        stack.enter_context(contextlib.chdir(ROOT))
        if out_dir is None:
            (ROOT / "outputs" / "bench").mkdir(parents=True, exist_ok=True)
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=ROOT / "outputs" / "bench")))
        torch.set_num_threads(int(cfg.device.threads))  # this process is the end device
        pin_to_cores(cfg.device.get("pin_cores"))
        link = instantiate(cfg.link)
        clock = ScenarioClock()
        scenario = build_scenario(cfg, link)  # profiles first: the server's start-up would slow them
        server = launch_server(cfg, link, clock, stack, Path(out_dir))
        session = open_socket_session(cfg, scenario, server, clock)
        runtime = instantiate(cfg.runtime)
        runtime.attach(session)
        yield SocketBench(cfg, scenario, session, runtime)


# --- policies on windows of real traces (the socket part of bench_policies) ------------------------

POLICIES = ("oracle", "dynamic", "best_static", "device_only", "server_only")

# (channel preset, window start s). The first three are where, simulated with the default config's
# profiles (fitted Lite0, device slowdown 4), the oracle's cut changes most within 20 s; on the
# 3G bus window device-only is always best (a sanity case: no policy should offload there).
WINDOWS = [("lte_driving", 205.0), ("wifi_walk", 30.0), ("nr5g_driving", 160.0), ("hsdpa_bus", 0.0)]

LOADS = {
    "none": ["server_load=none"],
    "batch4": ["server_load=batch", "server_load.batch_size=4"],
}


def latency_stats(records: list[dict[str, Any]]) -> dict[str, float]:
    latency = np.array([r["latency_s"] for r in records], dtype=float)
    return {"mean_s": float(latency.mean()), "p95_s": float(np.percentile(latency, 95)),
            "requests": len(records), "fallbacks": int(sum(bool(r["fallback"]) for r in records)),
            "cuts": dict(Counter(str(r["cut_name"]) for r in records))}


def run_window(channel: str, start: float, load: str, duration: float, requests: int,
               base: Sequence[str] = ()) -> dict[str, Any]:
    """Every policy of :data:`POLICIES` on one trace window and server load (periodic arrivals)."""
    interval = duration / requests
    overrides = [*base, f"channel={channel}", f"channel.start={start}", f"channel.duration={duration}",
                 "link=shaped", "arrivals=periodic", f"arrivals.interval_s={interval}",
                 f"dataset.limit={requests}", *LOADS[load]]
    out: dict[str, Any] = {"channel": channel, "start_s": start, "duration_s": duration, "load": load}
    with socket_bench(overrides) as bench:
        out["mean_rate_mbps"] = bench.scenario.uplink.time_weighted_mean_rate_bps / 1e6
        out["policies"] = {name: latency_stats(bench.run(name)) for name in POLICIES}
    oracle = out["policies"]["oracle"]
    for stats in out["policies"].values():
        stats["mean_over_oracle"] = stats["mean_s"] / oracle["mean_s"]
        stats["p95_over_oracle"] = stats["p95_s"] / oracle["p95_s"]
    return out


def summarise_windows(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per policy: mean over windows of the mean and p95 ratios to the oracle (and their max)."""
    table = {}
    for name in POLICIES:
        means = [r["policies"][name]["mean_over_oracle"] for r in rows]
        p95s = [r["policies"][name]["p95_over_oracle"] for r in rows]
        table[name] = {"mean_over_oracle": float(np.mean(means)), "mean_over_oracle_max": float(np.max(means)),
                       "p95_over_oracle": float(np.mean(p95s))}
    return table


def run_policies(quick: bool) -> dict[str, Any]:
    """Real-socket runs of every policy on windows of real traces, with and without server load.

    Each window is replayed on the real runtime (user-space shaped link, a fresh server process
    per window and load) with a camera sending periodic requests, so every policy sees the same
    start times; the oracle reads the true trace and load. Returns per window and load each
    policy's mean and p95 latency and their ratios to the oracle's, a summary over windows, and
    ``targets``: dynamic's mean latency over the oracle's, averaged over windows, against the
    simulator's target of 1.05. Here the oracle is no lower bound: it picks from the latency model
    with the true channel and load, and measured compute times scatter around the profiled ones,
    so a run of the same cuts can come out a few percent faster or slower than the oracle's.
    """
    started = time.perf_counter()
    windows = WINDOWS[:2] if quick else WINDOWS
    duration, requests = (5.0, 25) if quick else (20.0, 100)
    rows = []
    for channel, start in windows:
        for load in LOADS:
            row = run_window(channel, start, load, duration, requests)
            rows.append(row)
            print_row(row)
    summary = summarise_windows(rows)
    print_summary(summary, len(rows))
    return {
        "settings": {"windows": windows, "loads": list(LOADS), "duration_s": duration, "requests": requests,
                     "link": "shaped", "arrivals": "periodic", "model": "config default"},
        "wall_s": time.perf_counter() - started,
        "rows": rows,
        "summary": summary,
        "targets": [{"name": "socket_dynamic_mean_over_oracle", "value": summary["dynamic"]["mean_over_oracle"],
                     "op": "<=", "target": 1.05, "aggregate": "mean over windows"}],
    }


def print_row(row: dict[str, Any]) -> None:
    cells = " ".join(f"{name}={stats['mean_over_oracle']:.2f}" for name, stats in row["policies"].items())
    print(f"socket {row['channel']:>13s} @{row['start_s']:>5.0f}s {row['load']:>6s} "
          f"{row['mean_rate_mbps']:7.1f} Mbit/s  oracle {1e3 * row['policies']['oracle']['mean_s']:7.1f} ms  {cells}",
          flush=True)


def print_summary(summary: dict[str, dict[str, float]], windows: int) -> None:
    print(f"socket runtime, {windows} windows: mean latency / oracle (max over windows; p95 / oracle)")
    for name, cells in summary.items():
        print(f"  {name:12s} {cells['mean_over_oracle']:6.3f} ({cells['mean_over_oracle_max']:5.2f}; "
              f"{cells['p95_over_oracle']:5.2f})")
