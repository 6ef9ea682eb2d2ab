"""End to end: ``splitcomp-run`` starts a real server process and logs a finished MLflow run."""

import pytest

SMALL = ["model=torchvision", "model.name=resnet18", "dataset.image_size=64", "dataset.limit=20",
         "profile.batch_sizes=[1,2]", "profile.repeats=2", "compare_with=[]"]


def test_twenty_requests_over_loopback_agree_with_the_unsplit_model(run_task, mlflow_runs):
    result = run_task("run", *SMALL, "link=loopback", "policy=static", "policy.cut=1")
    assert "mlflow ui --backend-store-uri" in result.stdout
    (run,) = mlflow_runs()
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in ["accuracy", "accuracy_reference", "agreement", "latency_ms_mean", "latency_ms_p50",
                 "latency_ms_p95", "bytes_sent_mean", "requests"]:
        assert name in metrics, name
    assert metrics["requests"] == 20 and metrics["agreement"] == 1.0
    assert metrics["accuracy"] == metrics["accuracy_reference"]
    assert metrics["bytes_sent_mean"] > 0 and metrics["fallbacks"] == 0
    assert run.data.params["model.name"] == "resnet18"


def test_dynamic_policy_on_shaped_link_compares_with_baselines(run_task, mlflow_runs):
    result = run_task("run", *SMALL[:-1], "dataset.limit=12", "link=shaped", "channel=square",
                      "compare_with=[device_only,server_only,oracle]")
    assert "x oracle" in result.stdout
    (run,) = mlflow_runs()
    metrics = run.data.metrics
    assert metrics["agreement"] == 1.0 and "oracle_latency_ms_mean" in metrics
    assert "device_only_latency_ms_mean" in metrics and "server_only_latency_ms_mean" in metrics


def test_simulated_runtime_logs_the_same_metrics(run_task, mlflow_runs):
    run_task("run", *SMALL, "runtime=sim", "runtime.n_requests=200")
    (run,) = mlflow_runs()
    assert run.data.metrics["requests"] == 200 and "latency_ms_p95" in run.data.metrics


@pytest.mark.parametrize("overrides, message", [
    (["model.name=not_a_model"], "not_a_model"),
    (["policy=static", "policy.cut=nope"], "nope"),
    (["server.address=127.0.0.1:1"], "edge server at 127.0.0.1:1"),
])
def test_bad_input_is_one_sentence(run_task, overrides, message):
    result = run_task("run", *SMALL, *overrides, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_config_composes_and_prints(run_task):
    result = run_task("run", "--cfg", "job")
    for group in ["model", "dataset", "bottleneck", "channel", "server_load", "link", "codec", "policy",
                  "tracking"]:
        assert f"\n{group}:" in "\n" + result.stdout, group
