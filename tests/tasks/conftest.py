import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def task_command(module: str, store: Path, experiment: str, run_dir: Path, *overrides: str) -> list[str]:
    """``python -m splitcomp.tasks.<module>`` logging to ``experiment`` in the store, its outputs in ``run_dir``."""
    return [sys.executable, "-m", f"splitcomp.tasks.{module}", f"tracking.uri=sqlite:///{store}/mlflow.db",
            f"tracking.experiment={experiment}", f"hydra.run.dir={run_dir}", f"profile.cache_dir={store}/profiles",
            *overrides]


def task_env() -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture
def run_task(tmp_path, shared_store, experiment_name):
    """run_task(module, *overrides) -> CompletedProcess of ``python -m splitcomp.tasks.<module>``
    with its outputs under tmp_path and its MLflow run in the test's own experiment."""

    def run(module: str, *overrides: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        command = task_command(module, shared_store, experiment_name, tmp_path / "run", *overrides)
        result = subprocess.run(command, cwd=REPO, env=task_env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    return run


# tasks run side by side: most of a short task is single-threaded importing, so on two cores three
# at a time keep both busy (more only thrash and hold more memory)
AT_ONCE = 3


@pytest.fixture(scope="session")
def run_tasks_at_once(shared_store):
    """run_tasks_at_once(root, {name: overrides}, module="run", env={name: variables}) -> {name:
    CompletedProcess}: the tasks as processes side by side (AT_ONCE at a time), each with its outputs in
    ROOT/NAME/run and its MLflow run in the experiment NAME."""

    def run(root: Path, tasks: dict[str, list[str]], module: str = "run", env: dict[str, dict[str, str]] | None = None,
            timeout: float = 300) -> dict[str, subprocess.CompletedProcess]:
        _create_store(shared_store)  # before the processes: they would all create its tables at once

        def one(name: str) -> subprocess.CompletedProcess:
            command = task_command(module, shared_store, name, root / name / "run", *tasks[name])
            return subprocess.run(command, cwd=REPO, env={**task_env(), **(env or {}).get(name, {})},
                                  capture_output=True, text=True, timeout=timeout)

        with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
            return dict(zip(tasks, pool.map(one, tasks)))

    return run


def _create_store(store: Path) -> None:
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{store}/mlflow.db").search_experiments()


@pytest.fixture
def mlflow_runs(shared_store, experiment_name):
    """mlflow_runs() -> the runs of the test's own experiment."""

    def runs(experiment: str = experiment_name):
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{shared_store}/mlflow.db")
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else client.search_runs([exp.experiment_id])

    return runs
