import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """One MLflow store and profile cache for all task tests (creating a store takes ~10 s);
    each test logs to an experiment of its own."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def experiment_name(request):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")


@pytest.fixture
def run_task(tmp_path, shared_store, experiment_name):
    """run_task(module, *overrides) -> CompletedProcess of ``python -m splitcomp.tasks.<module>``
    with its outputs under tmp_path and its MLflow run in the test's own experiment."""

    def run(module: str, *overrides: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
        env.pop("MLFLOW_TRACKING_URI", None)
        command = [sys.executable, "-m", f"splitcomp.tasks.{module}",
                   f"tracking.uri=sqlite:///{shared_store}/mlflow.db", f"tracking.experiment={experiment_name}",
                   f"hydra.run.dir={tmp_path}/run", f"profile.cache_dir={shared_store}/profiles", *overrides]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    return run


@pytest.fixture
def mlflow_runs(shared_store, experiment_name):
    """mlflow_runs() -> the runs of the test's own experiment."""

    def runs(experiment: str = experiment_name):
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{shared_store}/mlflow.db")
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else client.search_runs([exp.experiment_id])

    return runs
