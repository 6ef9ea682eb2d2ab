"""End to end: ``splitcomp-run`` starts a real server process and logs a finished MLflow run."""

import re
import stat

import pytest

# profile.check=false: these tests check the run task, not the machine's quiet (on a shared
# machine a profile can fail its checks; tests/profile covers the checks themselves)
SMALL = ["model=torchvision", "model.name=resnet18", "dataset.image_size=64", "dataset.limit=20", "device.slowdown=1",
         "profile.batch_sizes=[1,2]", "profile.repeats=2", "profile.check=false", "compare_with=[]"]


# a test that comes first sets up its whole batch of side-by-side runs (setup counts toward pytest-timeout)
WHOLE_BATCH = pytest.mark.timeout(600)
SECRET, TOKEN = "from-the-environment-0123456789", "inline-token-9876543210"
# the end-to-end runs of this module, run side by side (module fixture ``runs``): name -> overrides
RUNS = {
    "loopback_static": [*SMALL, "link=loopback", "policy=static", "policy.cut=1"],
    # the secret comes from the environment (the server process inherits it); a secret-looking
    # value someone passes inline is redacted everywhere too
    "secret": [*SMALL, "dataset.limit=4", "link=loopback", "policy=static", "policy.cut=1",
               f"+tracking.api_token={TOKEN}"],
    "shaped_dynamic": [*SMALL[:-1], "dataset.limit=12", "link=shaped", "channel=square",
                       "compare_with=[device_only,server_only,oracle]"],
    "sim": [*SMALL, "runtime=sim", "runtime.n_requests=200"],
}


@pytest.fixture(scope="module")
def runs(run_tasks_at_once, tmp_path_factory):
    """name -> (the finished process, its run folder) of every run in RUNS."""
    root = tmp_path_factory.mktemp("runs")
    results = run_tasks_at_once(root, RUNS, env={"secret": {"SPLITCOMP_AUTH_SECRET": SECRET}})
    return {name: (result, root / name / "run") for name, result in results.items()}


def finished(runs, name: str):
    """The run NAME of ``runs`` (its process, its run folder), which must have succeeded."""
    result, run_dir = runs[name]
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result, run_dir


@WHOLE_BATCH
def test_twenty_requests_over_loopback_agree_with_the_unsplit_model(runs, mlflow_runs):
    result, _ = finished(runs, "loopback_static")
    assert "mlflow ui --backend-store-uri" in result.stdout
    (run,) = mlflow_runs("loopback_static")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in ["accuracy", "accuracy_reference", "agreement", "latency_ms_mean", "latency_ms_p50",
                 "latency_ms_p95", "bytes_sent_mean", "requests"]:
        assert name in metrics, name
    assert metrics["requests"] == 20 and metrics["agreement"] == 1.0
    assert metrics["accuracy"] == metrics["accuracy_reference"]
    assert metrics["bytes_sent_mean"] > 0 and metrics["fallbacks"] == 0
    assert run.data.params["model.name"] == "resnet18"


@WHOLE_BATCH
def test_a_secret_reaches_no_saved_file_param_or_tag(runs, mlflow_runs, shared_store):
    _, run_dir = finished(runs, "secret")
    (run,) = mlflow_runs("secret")
    assert run.data.metrics["fallbacks"] == 0  # device and server held the same secret
    for root in (run_dir, shared_store):  # the run folder; the MLflow database and artifacts
        for path in (p for p in root.rglob("*") if p.is_file()):
            content = path.read_bytes()
            assert SECRET.encode() not in content and TOKEN.encode() not in content, path
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "config.yaml",
                 "server/server_config.yaml"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600, name


@WHOLE_BATCH
def test_dynamic_policy_on_shaped_link_compares_with_baselines(runs, mlflow_runs):
    result, _ = finished(runs, "shaped_dynamic")
    assert "x oracle" in result.stdout
    assert "split" in result.stdout.split("share of requests per cut")[1].splitlines()[1]
    (run,) = mlflow_runs("shaped_dynamic")
    metrics = run.data.metrics
    assert metrics["agreement"] == 1.0 and "oracle_latency_ms_mean" in metrics
    assert "device_only_latency_ms_mean" in metrics and "server_only_latency_ms_mean" in metrics
    assert metrics["device_only_share_split"] == 0.0 and metrics["server_only_share_split"] == 0.0
    assert 0.0 <= metrics["share_split"] <= 1.0 and "oracle_share_split" in metrics


@WHOLE_BATCH
def test_simulated_runtime_logs_the_same_metrics(runs, mlflow_runs):
    finished(runs, "sim")
    (run,) = mlflow_runs("sim")
    assert run.data.metrics["requests"] == 200 and "latency_ms_p95" in run.data.metrics
    # the profile's measurement conditions travel with the run: a busy machine's profile is visible
    assert run.data.params["profile_check"] in {"passed", "failed, accepted"}
    assert float(run.data.params["profile_load.others_cores"]) >= 0


BAD_INPUT = {  # case: (overrides, what the error sentence names)
    "model_name": (["model.name=not_a_model"], "not_a_model"),
    "policy_cut": (["policy=static", "policy.cut=nope"], "nope"),
    "server_address": (["server.address=127.0.0.1:1"], "edge server at 127.0.0.1:1"),
    "channel_rate": (["channel=constant", "channel.rate_bps=-5"], "rate"),
    "empty_trace": (["channel=trace", "channel.path={tmp}/empty.csv"], "empty.csv"),
    "corrupt_weights": (["model.weights={tmp}/corrupt.pth"], "corrupt.pth"),
    "tracking_server": (["tracking.uri=http://127.0.0.1:1"], "tracking server"),
    "device_slowdown": (["device.slowdown=0.5"], "device.slowdown"),
}


@pytest.fixture(scope="module")
def bad_input_runs(run_tasks_at_once, tmp_path_factory):
    """Every bad-input case of ``test_bad_input_is_one_sentence``, run side by side (each is a
    process that mostly imports, then stops at the bad input)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "empty.csv").write_text("")
    (tmp / "corrupt.pth").write_bytes(b"not a checkpoint")
    return run_tasks_at_once(tmp, {f"bad_input_{case}": [*SMALL, *(o.replace("{tmp}", str(tmp)) for o in overrides)]
                                   for case, (overrides, _) in BAD_INPUT.items()})


@WHOLE_BATCH
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_sentence(bad_input_runs, case):
    result = bad_input_runs[f"bad_input_{case}"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert BAD_INPUT[case][1] in result.stderr.strip().splitlines()[-1]


def test_unknown_option_is_named(run_task):
    result = run_task("run", "no_such_option=3", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no_such_option" in result.stderr


def test_config_composes_and_prints(run_task):
    result = run_task("run", "--cfg", "job")
    for group in ["model", "dataset", "bottleneck", "channel", "server_load", "link", "codec", "policy",
                  "tracking"]:
        assert f"\n{group}:" in "\n" + result.stdout, group


def test_ctrl_c_marks_the_run_killed_and_keeps_its_records(shared_store, experiment_name, tmp_path, mlflow_runs):
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "splitcomp.tasks.run", *SMALL, "dataset.limit=400", "requests=400", "policy=server_only",
               "link=shaped", "channel=constant", "channel.rate_bps=4000000", f"tracking.experiment={experiment_name}",
               f"tracking.uri=sqlite:///{shared_store}/mlflow.db", f"hydra.run.dir={tmp_path}/run",
               f"profile.cache_dir={shared_store}/profiles"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri in this process sets it
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    seen, deadline = b"", time.monotonic() + 180
    while not past_request(5, seen) and time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096)
    assert proc.poll() is None, seen.decode(errors="replace")[-3000:]
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    runs = mlflow_runs()
    assert len(runs) == 1, (seen + rest).decode(errors="replace")[-3000:]
    (run,) = runs
    assert run.info.status == "KILLED"
    assert 5 <= run.data.metrics["partial_requests"] < 400
    import mlflow

    artifacts = [a.path for a in mlflow.MlflowClient(f"sqlite:///{shared_store}/mlflow.db").list_artifacts(run.info.run_id)]
    assert "records_partial.csv" in artifacts


def past_request(n: int, progress: bytes) -> bool:
    """Whether the progress bar of a 400-request run has shown at least ``n`` requests done (it skips
    counts: a fast run may show only every 4th, so no literal count is sure to appear)."""
    return any(n <= int(done) < 400 for done in re.findall(rb"\b(\d+)/400\b", progress))
