"""A sweep read back from MLflow: the job table, per-policy aggregates and the report command."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from splitcomp.track import report

REPO = Path(__file__).resolve().parents[2]
ORACLE = "splitcomp.policy.oracle.Oracle"


def fake_run(job: int, overrides: str, latency: float, target: str = "x.Dynamic", status: str = "FINISHED",
             **metrics: float):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run{job}", status=status, start_time=job),
        data=SimpleNamespace(tags={"splitcomp.job_num": str(job), "splitcomp.overrides": overrides},
                             params={"policy._target_": target},
                             metrics={"latency_ms_mean": latency, "latency_ms_p95": 2 * latency, **metrics}))


def test_parse_overrides_drops_hydra_prefixes():
    assert report.parse_overrides("policy=dynamic +report.parent=abc ~seed channel.path=a=b") == {
        "policy": "dynamic", "report.parent": "abc", "channel.path": "a=b"}


def test_job_table_matches_each_job_with_the_oracle_of_its_scenario():
    runs = [fake_run(0, "runtime=sim policy=dynamic channel=a", 12.0),
            fake_run(1, "runtime=sim policy=dynamic channel=b", 30.0),
            fake_run(2, "runtime=sim policy=oracle channel=a", 10.0, target=ORACLE),
            fake_run(3, "runtime=sim policy=oracle channel=b", 20.0, target=ORACLE)]
    table = report.job_table(runs)
    assert list(table["job"]) == [0, 1, 2, 3]
    assert "runtime" not in table and table.attrs["common"] == "runtime=sim"  # shared, not swept
    assert list(table["scenario"]) == ["channel=a", "channel=b", "channel=a", "channel=b"]
    assert list(table["latency_over_oracle"]) == pytest.approx([1.2, 1.5, 1.0, 1.0])
    agg = report.policy_aggregates(table).set_index("policy")
    assert agg.loc["dynamic", "jobs"] == 2
    assert agg.loc["dynamic", "latency_over_oracle_mean"] == pytest.approx(1.35)
    assert agg.loc["dynamic", "latency_over_oracle_max"] == pytest.approx(1.5)
    metrics = report.summary_metrics(table, report.policy_aggregates(table))
    assert metrics["jobs"] == 4 and metrics["jobs_failed"] == 0
    assert metrics["policy_dynamic_latency_over_oracle"] == pytest.approx(1.35)


def test_without_an_oracle_job_the_run_own_comparison_is_used():
    runs = [fake_run(0, "channel=a", 15.0, oracle_latency_ms_mean=10.0), fake_run(1, "channel=b", 9.0)]
    table = report.job_table(runs)
    assert table["latency_over_oracle"].iloc[0] == pytest.approx(1.5)
    assert pd.isna(table["latency_over_oracle"].iloc[1])
    assert list(table["policy"]) == ["Dynamic", "Dynamic"]  # no policy override: the class name


def test_markdown_and_tables_are_written(tmp_path):
    table = report.job_table([fake_run(0, "policy=a", 1.23456, status="FAILED"), fake_run(1, "policy=b", 2.0)])
    paths = report.write_tables(table, report.policy_aggregates(table), tmp_path)
    assert [p.name for p in paths] == ["report_jobs.csv", "report_policies.csv", "report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "| job | run_id | status | policy |" in text and "| 1.235 |" in text and "FAILED" in text
    assert pd.read_csv(paths[0])["policy"].tolist() == ["a", "b"]
    assert report.summary_metrics(table, report.policy_aggregates(table))["jobs_failed"] == 1


# --- against the real server and the sweep of conftest.py --------------------------------------

def test_report_reads_the_sweep_back_from_the_server(sweep, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep["server"].url)
    result = report.make_report(client, sweep["experiment"], tmp_path)
    table = result["table"]
    assert sorted(table["policy"]) == sorted(sweep["policies"]) and (table["status"] == "FINISHED").all()
    oracle = table.set_index("policy").loc["oracle"]
    assert oracle["latency_over_oracle"] == pytest.approx(1.0)
    assert {p.name for p in result["paths"]} >= {"report.md", "latency_per_policy.png", "latency_cdf.png"}
    same = report.make_report(client, sweep["experiment"], tmp_path / "again", parent_run_id=result["parent"].info.run_id)
    assert list(same["table"]["run_id"]) == list(table["run_id"])


def test_report_command_prints_the_table(sweep, tmp_path):
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "splitcomp.tasks.report", f"tracking.uri={sweep['server'].url}",
               f"tracking.experiment={sweep['experiment']}", f"hydra.run.dir={tmp_path}", "+report.cdf=false"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 jobs" in result.stdout and "per policy" in result.stdout
    for policy in sweep["policies"]:
        assert policy in result.stdout
    jobs = pd.read_csv(tmp_path / "report_jobs.csv")
    assert len(jobs) == 3 and not (tmp_path / "latency_cdf.png").exists()
