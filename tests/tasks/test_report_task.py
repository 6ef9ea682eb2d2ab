"""``splitcomp-report`` end to end on an experiment holding two sweeps (created through the MLflow client)."""

import time

import pandas as pd
import pytest


def seed_sweep(client, experiment_id: str, label: str, latencies: dict[str, float]) -> str:
    """A parent run tagged as a sweep and one finished child per policy, as a multirun leaves them."""
    parent = client.create_run(experiment_id, run_name=f"sweep-{label}", tags={"splitcomp.sweep": "true"})
    for job, (policy, latency) in enumerate(latencies.items()):
        target = "splitcomp.policy.oracle.Oracle" if policy == "oracle" else f"x.{policy}"
        child = client.create_run(experiment_id, tags={
            "mlflow.parentRunId": parent.info.run_id, "splitcomp.job_num": str(job),
            "splitcomp.overrides": f"runtime=sim policy={policy} channel={label}"})
        client.log_param(child.info.run_id, "policy._target_", target)
        client.log_metric(child.info.run_id, "latency_ms_mean", latency)
        client.log_metric(child.info.run_id, "latency_ms_p95", 2 * latency)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


EXPERIMENT = "two_sweeps"


@pytest.fixture(scope="module")
def store(shared_store):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{shared_store}/mlflow.db")  # where the tasks log
    experiment_id = client.create_experiment(EXPERIMENT)
    old = seed_sweep(client, experiment_id, "old_trace", {"dynamic": 30.0, "oracle": 20.0})
    time.sleep(0.01)  # distinct start times: "latest" is well defined
    new = seed_sweep(client, experiment_id, "new_trace", {"dynamic": 11.0, "device_only": 40.0, "oracle": 10.0})
    return {"old": old, "new": new}


BAD = {"unknown_experiment": (["tracking.experiment=nope"], "no MLflow experiment named 'nope'"),
       "unknown_run": (["+report.parent=0123456789abcdef"], "0123456789abcdef")}


@pytest.fixture(scope="module")
def reports(store, run_tasks_at_once, tmp_path_factory):
    """name -> (the finished ``splitcomp-report`` process, its output folder): the latest sweep, the
    old one by its id, and the bad cases of BAD, all of EXPERIMENT, run side by side."""
    root = tmp_path_factory.mktemp("reports")
    tasks = {"latest": ["+report.cdf=false"], "named": [f"+report.parent={store['old']}", "+report.cdf=false"],
             **{name: overrides for name, (overrides, _) in BAD.items()}}
    results = run_tasks_at_once(root, {name: [f"tracking.experiment={EXPERIMENT}", *overrides]
                                       for name, overrides in tasks.items()}, module="report")
    return {name: (result, root / name / "run") for name, result in results.items()}


def test_latest_sweep_by_default_and_a_named_one_on_request(reports, store):
    result, out = reports["latest"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {store['new']}" in result.stdout and "3 jobs" in result.stdout
    jobs = pd.read_csv(out / "report_jobs.csv")
    assert sorted(jobs["policy"]) == ["device_only", "dynamic", "oracle"]
    ratios = dict(zip(jobs["policy"], jobs["latency_over_oracle"]))
    assert ratios["dynamic"] == pytest.approx(1.1) and ratios["device_only"] == pytest.approx(4.0)
    policies = pd.read_csv(out / "report_policies.csv").set_index("policy")
    assert policies.loc["dynamic", "latency_over_oracle_mean"] == pytest.approx(1.1)
    assert (out / "report.md").read_text().startswith("## Jobs")
    assert (out / "latency_per_policy.png").stat().st_size > 0

    result, out = reports["named"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {store['old']}" in result.stdout and "2 jobs" in result.stdout
    jobs = pd.read_csv(out / "report_jobs.csv")
    assert jobs.set_index("policy").loc["dynamic", "latency_over_oracle"] == pytest.approx(1.5)


@pytest.mark.parametrize("case", BAD)
def test_bad_experiment_or_run_is_one_sentence(reports, case):
    result, _ = reports[case]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert BAD[case][1] in result.stderr.strip().splitlines()[-1]
