"""Sweeps beyond one process, as a user runs them: jobs as Ray tasks on a Ray cluster (a head and a
worker node, each its own raylet) and as submitit jobs, all logging in parallel to a
PostgreSQL-backed MLflow server that they reach over HTTP only; the sweep read back from that
server alone, also when a job's process was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitcomp.track.report import parse_overrides
from splitcomp.track.sweep import JOBS_TAG

REPO = Path(__file__).resolve().parents[2]
TINY = ["model=torchvision", "model.name=mobilenet_v3_small", "model.weights=null", "dataset=samples",
        "dataset.image_size=64", "compare_with=[]", "profile.batch_sizes=[1,2]", "profile.repeats=2",
        "profile.check=false"]  # jobs profile side by side on a busy machine: launchers are tested here, not profiles
POLICIES = ("device_only", "server_only", "oracle", "dynamic")
SERIES = "latency_s"  # one point per request


@pytest.fixture(scope="module")
def profiles(tmp_path_factory) -> Path:
    """One profile cache for the module's sweeps (the first job to need a profile measures it)."""
    return tmp_path_factory.mktemp("profiles")


def sweep_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", **extra)
    for name in ("MLFLOW_TRACKING_URI", "SPLITCOMP_SWEEP_PARENT_RUN_ID"):
        env.pop(name, None)
    return env


def sweep_command(uri: str, experiment: str, sweep_dir: Path, profiles: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "splitcomp.tasks.run", "-m", *TINY, *overrides, f"tracking.uri={uri}",
            f"tracking.experiment={experiment}", f"hydra.sweep.dir={sweep_dir}", f"profile.cache_dir={profiles}"]


def ray_sweep_command(server, experiment: str, sweep_dir: Path, profiles: Path, *overrides: str) -> list[str]:
    """A sweep launched beside the Ray cluster, in the tracking server's network namespace."""
    return server.inside(sweep_command(server.inner_url, experiment, sweep_dir, profiles, *overrides,
                                       "hydra/launcher=ray_cluster"))


def sweep_runs(server, experiment: str) -> tuple[object, list[object]]:
    """(the parent run, its child runs) of the only sweep in ``experiment``, straight from the server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("splitcomp.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == len(children) + 1, "a run outside the sweep"
    return parent, sorted(children, key=lambda r: int(r.data.tags["splitcomp.job_num"]))


def assert_nothing_lost(server, children: list[object]) -> None:
    """Every job logged its whole run: summary metrics, one series point per request, records."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    for run in children:
        requests = int(run.data.metrics["requests"])
        assert requests > 0 and {"latency_ms_mean", "latency_ms_p95", "bytes_sent_mean"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, SERIES)) == requests
        assert "records.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


def report_from_elsewhere(server, experiment: str, folder: Path) -> subprocess.CompletedProcess:
    """``splitcomp-report`` from a folder outside the repository and the sweep: the server alone."""
    folder.mkdir()
    result = subprocess.run([sys.executable, "-m", "splitcomp.tasks.report", f"tracking.uri={server.url}",
                             f"tracking.experiment={experiment}", "hydra.run.dir=report"], cwd=folder,
                            env=sweep_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_submitit_sweep_runs_four_jobs_at_once_against_postgres(mlflow_server, profiles, tmp_path):
    """submitit_local starts every job as its own submitit job at once: four concurrent writers."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')")
    if mlflow_server.backend != "postgresql":
        pytest.skip("no PostgreSQL here: the tracking server runs on SQLite (bash .ci/setup installs postgresql)")
    server = mlflow_server
    command = sweep_command(server.url, "submitit_sweep", tmp_path / "sweep", profiles, "runtime=sim",
                            f"policy={','.join(POLICIES)}", "hydra/launcher=submitit_local",
                            "hydra.launcher.timeout_min=5")
    result = subprocess.run(command, env=sweep_env(), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    parent, children = sweep_runs(server, "submitit_sweep")
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 0
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["splitcomp.pid"] for r in children}) == 4  # four job processes
    starts = sorted(r.info.start_time for r in children)
    ends = sorted(r.info.end_time for r in children)
    assert starts[-1] < ends[0], "the four jobs did not run at the same time"
    assert_nothing_lost(server, children)
    from mlflow import MlflowClient

    summary = {a.path for a in MlflowClient(tracking_uri=server.url).list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.md", "sweep_summary_jobs.csv"} <= summary


def test_ray_cluster_sweep_lands_every_job_under_one_parent(mlflow_server, ray_cluster, profiles,
                                                            tmp_path):
    server = mlflow_server
    command = ray_sweep_command(server, "ray_sweep", tmp_path / "sweep", profiles, "runtime=sim",
                                f"policy={','.join(POLICIES)}")
    result = subprocess.run(command, env=sweep_env(RAY_ADDRESS=ray_cluster), capture_output=True, text=True,
                            timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    parent, children = sweep_runs(server, "ray_sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags[JOBS_TAG] == "4"
    assert parent.data.metrics["jobs"] == 4 and parent.data.metrics["jobs_failed"] == 0
    assert [r.data.tags["splitcomp.job_num"] for r in children] == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in children)
    # the jobs ran as Ray tasks on both nodes (one CPU each), in processes other than the launcher
    assert len({r.data.tags["splitcomp.ray_node"] for r in children}) == 2
    assert_nothing_lost(server, children)


def server_processes(folder: Path) -> list[int]:
    """Live ``splitcomp-serve`` processes whose config lies under ``folder`` (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "splitcomp.tasks.serve" in args and state != "Z" and any(str(folder) in a for a in args):
            found.append(int(cmdline.parent.name))
    return found


def wait_for_running_job(server, experiment: str, override: str, deadline: float) -> object:
    """The job run whose overrides hold ``override``, once it is RUNNING on a worker."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    while time.monotonic() < deadline:
        experiment_found = client.get_experiment_by_name(experiment)
        if experiment_found is not None:
            for run in client.search_runs([experiment_found.experiment_id], "attributes.status = 'RUNNING'"):
                if override in run.data.tags.get("splitcomp.overrides", "").split():
                    return run
        time.sleep(0.5)
    raise AssertionError(f"no running job with {override}")


def test_a_killed_ray_job_fails_alone_and_its_server_process_ends(mlflow_server, ray_cluster, profiles,
                                                                  tmp_path):
    """Two socket jobs (each starts its edge-server process on its worker); the first waits 60 s
    between requests and its worker process is killed meanwhile. The other job still runs and logs,
    the killed one's run ends FAILED, the parent counts it, and no job's server process is left."""
    server = mlflow_server
    command = ray_sweep_command(server, "ray_killed", tmp_path / "sweep", profiles, "runtime=socket", "link=loopback",
                                "policy=server_only", "arrivals=periodic", "requests=3", "arrivals.interval_s=60,1.0")
    sweep = subprocess.Popen(command, env=sweep_env(RAY_ADDRESS=ray_cluster), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        victim = wait_for_running_job(server, "ray_killed", "arrivals.interval_s=60", time.monotonic() + 120)
        deadline = time.monotonic() + 60
        while not server_processes(tmp_path / "sweep" / "0") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server_processes(tmp_path / "sweep" / "0"), "the job started no server process"
        os.kill(int(victim.data.tags["splitcomp.pid"]), signal.SIGKILL)
        out, err = sweep.communicate(timeout=180)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode != 0 and "died" in out + err, err[-3000:]
    deadline = time.monotonic() + 15  # the killed job's server notices that its run is gone
    while server_processes(tmp_path / "sweep") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server_processes(tmp_path / "sweep"), "a job's server process outlived its job"
    parent, children = sweep_runs(server, "ray_killed")
    status = {parse_overrides(r.data.tags["splitcomp.overrides"])["arrivals.interval_s"]: r for r in children}
    assert status["60"].info.status == "FAILED" and "splitcomp.failure" in status["60"].data.tags
    assert status["1.0"].info.status == "FINISHED"
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 1
    assert_nothing_lost(server, [status["1.0"]])
    report = report_from_elsewhere(server, "ray_killed", tmp_path / "elsewhere")
    assert "2 jobs, 1 failed" in report.stdout and report.stdout.count("FINISHED") == 1
