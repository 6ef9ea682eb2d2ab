"""One sweep, four launchers: wall time, and whether every run reached the tracking server whole.

The same 16-job simulated sweep (4 policies x 4 synthetic channels, MobileNetV3-Small at 64 px,
2000 requests per job; 8000 without --quick) runs with Hydra's basic launcher (one job after
another in the launching process), joblib (2 worker processes), Ray (the ``ray_cluster`` launcher
on a real local cluster: a head and a worker node started with ``ray start``, one CPU each) and
submitit (``submitit_local``, every job its own process, 4 at a time), all logging to one
PostgreSQL-backed MLflow server (experiments/tracking_server.sh). The profile cache is filled once
before the timed sweeps, so every job does the same work under every launcher. As root, all of it
runs in a network namespace of its own (experiments/netns.sh), where Ray keeps to the loopback.

Reported per launcher: the wall time of the whole ``splitcomp-run -m`` command (start-up, parent
run and summary included), its speed-up over the basic launcher (run right before Ray), the jobs
running at once, the load average around it, and
the runs that arrived whole: FINISHED, ``requests`` as asked, one ``latency_s`` point per request
and the ``records.csv`` artifact, read back from the server. The parent run must be FINISHED with
``jobs_failed`` 0. Targets: ``ray_speedup_over_basic`` >= 1.5 (two one-CPU Ray nodes against one
process, on this 2-core machine) and ``runs_lost`` <= 0 over every launcher.

    flock /tmp/splitcomp-bench.lock python experiments/bench_sweep.py --quick --json outputs/bench/sweep.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from splitcomp.configs import project_root

ROOT = project_root()
JOB = ["runtime=sim", "model=torchvision", "model.name=mobilenet_v3_small", "model.weights=null", "dataset=samples",
       "dataset.image_size=64", "compare_with=[]", "profile.batch_sizes=[1,2]", "profile.repeats=2",
       "profile.check=false"]  # launchers are measured here, not profiles: taken as measured, also on a busy machine
SWEEP = ["policy=device_only,server_only,oracle,dynamic", "channel=square,step,random_walk,markov"]
JOBS = 16
LAUNCHERS = {  # name: (overrides, jobs at once)
    "basic": ([], 1),
    "joblib": (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2),
    "ray": (["hydra/launcher=ray_cluster"], 2),
    "submitit": (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30", "hydra.sweeper.max_batch_size=4"],
                 4),
}
# The basic launcher runs right before Ray: on a shared machine, other work changes less between two
# neighbouring runs.
ORDER = ("basic", "ray", "joblib", "submitit")
SPEEDUP_TARGET = 1.5
NETNS_ENV = "SPLITCOMP_BENCH_NETNS"


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHON=sys.executable, **extra)
    for name in ("MLFLOW_TRACKING_URI", "SPLITCOMP_SWEEP_PARENT_RUN_ID"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def service(script: str, folder: Path, *args: str) -> Iterator[str]:
    """``experiments/SCRIPT start FOLDER ARGS`` (yields the address it prints) ... ``stop FOLDER``."""
    command = ["bash", str(ROOT / "experiments" / script)]
    try:
        out = subprocess.run([*command, "start", str(folder), *args], env=environment(), check=True,
                             capture_output=True, text=True, timeout=300).stdout
        yield out.strip().splitlines()[-1]
    finally:
        subprocess.run([*command, "stop", str(folder)], env=environment(), capture_output=True, timeout=120)


def splitcomp(task: str, overrides: list[str], env: dict[str, str]) -> float:
    """Run ``python -m splitcomp.tasks.TASK OVERRIDES``; its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"splitcomp.tasks.{task}", *overrides], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
    return wall


def check_sweep(uri: str, sweep_dir: Path, requests: int) -> dict:
    """What the server holds of the sweep whose record is in ``sweep_dir``."""
    from mlflow import MlflowClient

    from splitcomp.track.report import child_runs

    client = MlflowClient(tracking_uri=uri)
    record = sweep_dir / "mlflow_sweep.json"
    if not record.exists():
        return {"parent_status": "missing", "runs": 0, "runs_complete": 0}
    parent = client.get_run(json.loads(record.read_text())["parent_run_id"])
    children = child_runs(client, parent)
    complete = [run for run in children if run_is_whole(client, run, requests)]
    return {"parent_status": parent.info.status, "parent_jobs": parent.data.metrics.get("jobs"),
            "parent_jobs_failed": parent.data.metrics.get("jobs_failed"), "runs": len(children),
            "runs_complete": len(complete)}


def run_is_whole(client: Any, run: Any, requests: int) -> bool:
    return (run.info.status == "FINISHED" and run.data.metrics.get("requests") == requests
            and len(client.get_metric_history(run.info.run_id, "latency_s")) == requests
            and "records.csv" in {a.path for a in client.list_artifacts(run.info.run_id)})


def bench(work: Path, requests: int) -> dict:
    job = [*JOB, f"requests={requests}", f"runtime.n_requests={requests}", f"profile.cache_dir={work / 'profiles'}"]
    results: dict[str, dict] = {}
    with service("tracking_server.sh", work / "tracking") as uri, service("ray_cluster.sh", work / "ray", "1", "1") as ray:
        tracking = [f"tracking.uri={uri}"]
        # the profiles once, untimed: afterwards every job reads them from the cache
        splitcomp("profile", [*job, *tracking, "tracking.experiment=bench_sweep_profiles",
                              f"hydra.run.dir={work / 'profile_run'}"], environment())
        for name in ORDER:
            launcher, at_once = LAUNCHERS[name]
            sweep_dir = work / "sweeps" / name
            load_before = os.getloadavg()[0]
            print(f"{name}: {JOBS} jobs, {at_once} at a time ...", flush=True)
            wall = splitcomp("run", ["-m", *job, *SWEEP, *launcher, *tracking, f"tracking.experiment=bench_sweep_{name}",
                                     f"hydra.sweep.dir={sweep_dir}"], environment(RAY_ADDRESS=ray))
            results[name] = {"wall_s": wall, "jobs_at_once": at_once, "jobs": JOBS, "load_before": load_before,
                             "load_after": os.getloadavg()[0], **check_sweep(uri, sweep_dir, requests)}
    basic = results["basic"]["wall_s"]
    for result in results.values():
        result["speedup_over_basic"] = basic / result["wall_s"]
    return results


def print_table(results: dict) -> None:
    print(f"\n{'launcher':<10} {'at once':>7} {'wall s':>8} {'speed-up':>8} {'runs whole':>10} {'parent':>9} "
          f"{'load 1 min':>10}")
    for name, r in results.items():
        print(f"{name:<10} {r['jobs_at_once']:>7} {r['wall_s']:>8.1f} {r['speedup_over_basic']:>7.2f}x "
              f"{r['runs_complete']:>4}/{r['jobs']:<5} {r['parent_status']:>9} "
              f"{r['load_before']:>4.1f}-{r['load_after']:.1f}")


def targets(results: dict) -> list[dict]:
    """runs_lost: job runs that did not arrive whole, plus parent runs not FINISHED with no failed job."""
    lost = sum(r["jobs"] - r["runs_complete"] for r in results.values())
    lost += sum(r["parent_status"] != "FINISHED" or r.get("parent_jobs_failed") != 0 for r in results.values())
    return [{"name": "ray_speedup_over_basic", "value": results["ray"]["speedup_over_basic"], "op": ">=",
             "target": SPEEDUP_TARGET},
            {"name": "runs_lost", "value": lost, "op": "<=", "target": 0}]


def in_own_netns() -> int | None:
    """Run this script again inside a network namespace of its own (experiments/netns.sh) and return
    its exit status; None when already inside one, or when none can be made (not root): a
    multi-node Ray cluster listens on the host's network address, in the namespace on its loopback."""
    if os.environ.get(NETNS_ENV):
        return None
    name = f"splitcomp-bench-{os.getpid()}"
    netns = ["bash", str(ROOT / "experiments" / "netns.sh")]
    if subprocess.run([*netns, "create", name], capture_output=True).returncode != 0:
        print("no network namespace (needs root): the Ray cluster listens on this host's address", file=sys.stderr)
        return None
    try:
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, *sys.argv],
                              env=dict(os.environ, **{NETNS_ENV: name})).returncode
    finally:
        subprocess.run([*netns, "delete", name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2000 requests per job (default 8000)")
    parser.add_argument("--json", type=Path, help="write the raw figures and targets here")
    parser.add_argument("--requests", type=int, help="requests per job (overrides --quick)")
    args = parser.parse_args()
    status = in_own_netns()
    if status is not None:
        sys.exit(status)
    requests = args.requests or (2000 if args.quick else 8000)
    # not under a private temporary root: the postgres user must be able to enter the folder
    work = Path(tempfile.mkdtemp(prefix="splitcomp-bench-sweep-"))
    work.chmod(0o755)
    results = bench(work, requests)
    print_table(results)
    # one profile for every job: a second file would mean some job measured its own
    profiles = len(list((work / "profiles").glob("*.json")))
    report = {"requests_per_job": requests, "jobs": JOBS, "cpus": os.cpu_count(), "profile_files": profiles,
              "launchers": results, "targets": targets(results)}
    for target in report["targets"]:
        print(f"target {target['name']}: {target['value']:.3g} {target['op']} {target['target']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
