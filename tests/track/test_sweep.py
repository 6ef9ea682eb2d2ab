"""A multirun makes one MLflow run per job, grouped under a parent run carrying the sweep's summary."""

import json
import os

import pandas as pd
import pytest
from omegaconf import OmegaConf

from splitcomp.track import start_run_from_config
from splitcomp.track.sweep import PARENT_ENV, SweepCallback


def search(server, experiment_id: str, filter_string: str = "") -> list[dict]:
    body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
    return server.api("/api/2.0/mlflow/runs/search", body).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


@pytest.fixture(scope="module")
def runs(sweep):
    server = sweep["server"]
    experiment = server.api(f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={sweep['experiment']}")["experiment"]
    everything = search(server, experiment["experiment_id"])
    parents = [r for r in everything if tags(r).get("splitcomp.sweep") == "true"]
    children = [r for r in everything if "mlflow.parentRunId" in tags(r)]
    return {"server": server, "parents": parents, "children": children, "all": everything,
            "policies": sweep["policies"], "experiment": sweep["experiment"]}


def test_one_child_run_per_job_under_one_parent(runs, sweep):
    (parent,) = runs["parents"]
    policies_run = runs["policies"]
    parent_id = parent["info"]["run_id"]
    assert len(runs["children"]) == len(policies_run) and len(runs["all"]) == len(policies_run) + 1
    assert {tags(r)["mlflow.parentRunId"] for r in runs["children"]} == {parent_id}
    assert sorted(tags(r)["splitcomp.job_num"] for r in runs["children"]) == ["0", "1", "2"]
    policies = {p for r in runs["children"] for p in tags(r)["splitcomp.overrides"].split() if p.startswith("policy=")}
    assert policies == {f"policy={p}" for p in policies_run}
    assert all(r["info"]["status"] == "FINISHED" and metrics(r)["requests"] > 0 for r in runs["children"])
    record = json.loads((sweep["dir"] / "mlflow_sweep.json").read_text())
    assert record["parent_run_id"] == parent_id and record["experiment"] == runs["experiment"]


def test_parent_carries_the_sweep_summary(runs):
    (parent,) = runs["parents"]
    server, run_id = runs["server"], parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    m = metrics(parent)
    assert m["jobs"] == len(runs["policies"]) and m["jobs_failed"] == 0
    assert m["policy_oracle_latency_over_oracle"] == pytest.approx(1.0)
    # full offloading of a 64 px image over the square channel is no faster than the oracle, up to
    # the jobs' own profiles: each job measures its cuts, side by side with the others
    assert m["policy_server_only_latency_over_oracle"] >= 0.9
    listed = server.api(f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")
    names = {f["path"] for f in listed["files"]}
    assert {"sweep_summary.md", "sweep_summary_jobs.csv", "sweep_summary_policies.csv"} <= names
    csv_text = server.text(f"/get-artifact?path=sweep_summary_jobs.csv&run_uuid={run_id}")
    from io import StringIO

    table = pd.read_csv(StringIO(csv_text))
    assert sorted(table["policy"]) == sorted(runs["policies"])
    children_latency = {tags(r)["splitcomp.job_num"]: metrics(r)["latency_ms_mean"] for r in runs["children"]}
    for _, row in table.iterrows():
        assert row["latency_ms_mean"] == pytest.approx(children_latency[str(row["job"])])


# --- the callback in process, against a local store --------------------------------------------

def hydra_like_config(tmp_path, uri: str):
    return OmegaConf.create({
        "tracking": {"uri": uri, "experiment": "local_sweep"},
        "hydra": {"overrides": {"task": ["policy=a,b"]}, "sweep": {"dir": str(tmp_path / "sweep")},
                  "launcher": {"_target_": "basic"}, "job": {"name": "run"}},
    })


def test_callback_groups_runs_and_closes_the_parent(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    callback = SweepCallback()
    config = hydra_like_config(tmp_path, uri)
    callback.on_multirun_start(config)
    assert os.environ[PARENT_ENV] == callback.parent_run_id
    with start_run_from_config(config.tracking) as tracker:
        tracker.log_metrics({"latency_ms_mean": 5.0})
    callback.on_multirun_end(config)
    assert PARENT_ENV not in os.environ
    client = MlflowClient(uri)
    parent = client.get_run(callback.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 1
    assert client.get_run(tracker.run_id).data.tags["mlflow.parentRunId"] == callback.parent_run_id


def test_aborted_sweep_leaves_the_parent_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    callback = SweepCallback()
    callback.on_multirun_start(hydra_like_config(tmp_path, uri))
    callback._close_if_open()  # what the exit hook does when a failed job ends the sweep early
    assert MlflowClient(uri).get_run(callback.parent_run_id).info.status == "FAILED"
    assert PARENT_ENV not in os.environ


def test_job_start_exports_the_parent_in_a_fresh_process(monkeypatch):
    """Remote launchers run jobs where the launching process's environment is absent: the callback's
    own state carries the id there."""
    monkeypatch.delenv(PARENT_ENV, raising=False)
    callback = SweepCallback()
    callback.parent_run_id = "abc123"
    callback.on_job_start(OmegaConf.create({}), task_function=None)
    assert os.environ[PARENT_ENV] == "abc123"
    monkeypatch.delenv(PARENT_ENV)
    SweepCallback().on_job_start(OmegaConf.create({}), task_function=None)
    assert PARENT_ENV not in os.environ


def test_sweep_size_counts_the_jobs_of_the_basic_sweeper():
    from splitcomp.track.sweep import sweep_size

    def config(task, params=None, target="hydra._internal.core_plugins.basic_sweeper.BasicSweeper"):
        return OmegaConf.create({"hydra": {"overrides": {"task": task},
                                           "sweeper": {"_target_": target, "params": params}}})

    assert sweep_size(config(["policy=a,b,c", "channel=x,y", "seed=1"])) == 6
    assert sweep_size(config(["seed=range(0,4)", "policy=a,b"])) == 8
    assert sweep_size(config(["policy=a"], params={"channel": "x,y,z"})) == 3
    assert sweep_size(config(["policy=a,b"], target="hydra_plugins.x.OptunaSweeper")) is None


def test_dead_jobs_end_failed_and_count_live_ones_stay_open(tmp_path, monkeypatch):
    """Of four jobs one finished, one's process died with its run open, one still runs (a launcher
    that gave up early leaves it running), one died before opening a run: the dead one's run ends
    FAILED, the live one's stays open, and the parent counts three jobs of four as failed."""
    import socket

    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    callback = SweepCallback()
    config = hydra_like_config(tmp_path, uri)
    config.hydra.overrides.task = ["policy=a,b,c,d"]
    config.hydra.sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    callback.on_multirun_start(config)
    client = MlflowClient(uri)
    experiment_id = client.get_run(callback.parent_run_id).info.experiment_id

    def job(num: int, **tags: str):
        return client.create_run(experiment_id, tags={"mlflow.parentRunId": callback.parent_run_id,
                                                      "splitcomp.job_num": str(num), **tags}).info.run_id

    finished = job(0)
    client.log_metric(finished, "latency_ms_mean", 5.0)
    client.set_terminated(finished)
    dead = job(1, **{"splitcomp.host": socket.gethostname(), "splitcomp.pid": "999999999"})
    live = job(2, **{"splitcomp.host": socket.gethostname(), "splitcomp.pid": str(os.getpid())})
    callback._close_if_open()  # the launcher reported a dead job: the sweep ended early
    assert client.get_run(dead).info.status == "FAILED" and "splitcomp.failure" in client.get_run(dead).data.tags
    assert client.get_run(live).info.status == "RUNNING"
    parent = client.get_run(callback.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["splitcomp.jobs"] == "4"
    assert parent.data.metrics["jobs"] == 4 and parent.data.metrics["jobs_failed"] == 3
