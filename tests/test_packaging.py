"""The built wheel is the whole package: installed into a fresh virtual environment, every console
script runs from a folder outside the repository, with the configs the wheel carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "splitcomp", "conf", "hydra_plugins")
SCRIPTS = ("splitcomp-run", "splitcomp-serve", "splitcomp-bottlenecks", "splitcomp-train", "splitcomp-profile",
           "splitcomp-report")
TINY_SIM = ["runtime=sim", "model=torchvision", "model.name=mobilenet_v3_small", "model.weights=null",
            "dataset=samples", "dataset.image_size=64", "requests=5", "compare_with=[]", "profile.batch_sizes=[1]",
            "profile.repeats=1", "profile.check=false"]


# where the installed package and its configs are, and the launchers Hydra finds
WHERE = """
import splitcomp.configs as c
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
print(c.__file__, c.config_dir(), ",".join(p.__name__ for p in Plugins.instance().discover(Launcher)))
"""


def tracked_files(folder: str) -> list[Path]:
    """The files of a source folder as a checkout has them (no caches)."""
    return sorted(p.relative_to(REPO) for p in (REPO / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the sources (the checkout stays free of build folders)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    offline = ["--no-build-isolation"] if _has_setuptools() else []  # else pip fetches setuptools
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, str(source), "-w", str(root / "dist")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = (root / "dist").glob("splitcomp-*.whl")
    return built


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment (system site packages for torch and the other dependencies)
    with the wheel installed into it."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
                   check=True, timeout=120)
    # --ignore-installed: the system site may hold splitcomp too (an editable checkout)
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                             "--ignore-installed", "--no-deps", "--no-index", str(wheel)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def venv_env(venv: Path) -> dict[str, str]:
    """The environment of a user of the venv: its bin first, no PYTHONPATH to a checkout."""
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", MLFLOW_DISABLE_TELEMETRY="true",
               VIRTUAL_ENV=str(venv))
    for name in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "SPLITCOMP_SWEEP_PARENT_RUN_ID"):
        env.pop(name, None)
    return env


def test_the_wheel_carries_every_module_config_and_config_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p) for p in tracked_files("splitcomp") + tracked_files("hydra_plugins") if p.suffix == ".py"}
    assert modules - names == set(), "modules missing from the wheel: list their packages in pyproject.toml"
    configs = {"splitcomp/" + str(p) for p in tracked_files("conf")}
    assert any(c.endswith(".csv") for c in configs)  # data the configs name, not only YAML
    assert configs - names == set()


def test_installed_wheel_runs_from_any_folder(venv, tmp_path):
    env = venv_env(venv)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", WHERE], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    module, conf, launchers = where.stdout.split()
    assert module.startswith(str(venv)) and conf.startswith(str(venv)), where.stdout
    assert "RayClusterLauncher" in launchers.split(",")  # Hydra finds the shipped launcher
    # a short simulated run, its relative paths resolved in the current folder, and beside it every
    # console script composing its config (all at once: most of their time is importing)
    simulated = subprocess.Popen(["splitcomp-run", *TINY_SIM, "tracking.experiment=wheel"], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = {script: subprocess.Popen([script, "--cfg", "job"], cwd=tmp_path, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for script in SCRIPTS}
    try:
        for script, process in running.items():
            out, err = process.communicate(timeout=180)
            assert process.returncode == 0, f"{script}: {err[-2000:]}"
            assert "\npolicy:" in "\n" + out and "\ntracking:" in "\n" + out, script
        out, err = simulated.communicate(timeout=240)
    finally:
        for process in (simulated, *running.values()):
            if process.poll() is None:
                process.kill()
    assert simulated.returncode == 0, err[-3000:]
    assert "5 requests" in out
    assert (tmp_path / "outputs" / "mlflow.db").exists() and list((tmp_path / "outputs" / "profiles").glob("*.json"))


def test_user_config_dir_adds_to_the_shipped_configs(venv, tmp_path):
    """--config-dir puts a user's own options next to the shipped ones."""
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "tiny.yaml").write_text("# @package _global_\nrequests: 7\nseed: 42\n")
    result = subprocess.run(["splitcomp-run", "--config-dir", str(tmp_path / "mine"), "+experiment=tiny", "--cfg",
                             "job"], cwd=tmp_path, env=venv_env(venv), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\nrequests: 7\n" in result.stdout and "\nseed: 42\n" in result.stdout
