"""End-to-end: ``splitcomp-profile`` as a user runs it (needs the main config's groups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitcomp.profile.latency import Profiles

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["model=torchvision", "model.name=resnet18", "model.weights=null", "dataset.image_size=64",
             "profile.batch_sizes=[1,2]", "profile.warmup=0", "profile.repeats=2"]


def skip_unless_config_composes() -> None:
    """The task runs on the main config (conf/config.yaml); skip while its groups are incomplete."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            compose(config_name="config", overrides=OVERRIDES)
    except (HydraException, OSError) as exc:
        pytest.skip(f"the main config does not compose yet: {exc}")


def run_profile(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    skip_unless_config_composes()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "splitcomp.tasks.profile", *OVERRIDES, f"profile.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


# two repeats of a 64 px model on a busy shared machine often fail the check: this test is about the
# task's outputs, the check has tests of its own
ACCEPT = "profile.check=false"


@pytest.mark.slow
def test_profile_task_writes_profiles_plot_and_mlflow_run(tmp_path):
    done = run_profile(tmp_path, ACCEPT)
    assert done.returncode == 0, done.stderr[-3000:]
    profiles = Profiles.load(tmp_path / "run" / "profiles.json")
    assert profiles.cuts[0].name == "input" and profiles.cuts[0].is_full_offload
    assert profiles.cuts[-1].name == "output" and profiles.cuts[-1].is_device_only
    assert profiles.cuts[0].bytes_up == 3 * 64 * 64
    assert all(sorted(c.tail_s) == [1, 2] for c in profiles.cuts)
    assert (tmp_path / "run" / "profiles.png").stat().st_size > 1000
    assert "measured" in done.stdout

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.metrics["candidates"] == len(profiles.cuts)
    assert "head_ms" in run.data.metrics and "profile_s" in run.data.metrics
    # the machine's load while measuring, and what the check did, as params and in the JSON
    assert int(run.data.params["profile_load.cpus"]) == os.cpu_count()
    assert float(run.data.params["profile_load.wall_s"]) > 0
    assert run.data.params["profile_check"] in ("passed", "failed, accepted")
    assert json.loads((tmp_path / "run" / "profiles.json").read_text())["measurement"]["load"]["cpus"] == os.cpu_count()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"profiles.json", "profiles.png", "profiles.txt"} <= artifacts

    again = run_profile(tmp_path, ACCEPT)  # same model, weights, input and settings: the cache answers
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cached" in again.stdout
    assert Profiles.load(tmp_path / "run" / "profiles.json") == profiles


def test_profile_task_reports_a_bad_slowdown_in_one_line(tmp_path):
    done = run_profile(tmp_path, "device.slowdown=0.5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: device.slowdown is 0.5")
    assert "Traceback" not in done.stderr


def test_profile_task_refuses_profiles_that_fail_their_check_in_one_line(tmp_path):
    # limits no real measurement meets: any IQR above 0 is an outlier, and nothing is re-measured
    done = run_profile(tmp_path, "profile.max_spread=0", "profile.jitter_ms=0", "profile.remeasure=0")
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the profiles measured") and "spread check" in last
    assert "profile.force=true" in last and "profile.check=false" in last
    assert "Traceback" not in done.stderr
    assert (tmp_path / "run" / "profiles-refused.json").is_file()  # the refused times, for a look
    assert not list((tmp_path / "cache").glob("*.json"))  # never cached
