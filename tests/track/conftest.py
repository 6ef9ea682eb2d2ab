"""A real ``mlflow server`` on 127.0.0.1 and one small simulated sweep logged to it, shared by the
tests of this folder (starting either costs tens of seconds)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "sweep_test"
POLICIES = ("device_only", "server_only", "oracle")
TINY = ["runtime=sim", "model=torchvision", "model.name=mobilenet_v3_small", "dataset=samples",
        "dataset.image_size=64", "compare_with=[]", "profile.batch_sizes=[1,2]", "profile.repeats=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               PYTHONUNBUFFERED="1")
    for name in ("MLFLOW_TRACKING_URI", "SPLITCOMP_SWEEP_PARENT_RUN_ID"):
        env.pop(name, None)
    return env


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, body: dict | None = None) -> dict:
        """GET (no body) or POST (JSON body) on the REST API."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return response.read().decode()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/m.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def sweep(mlflow_server, tmp_path_factory):
    """Three simulated jobs (one per policy) in two joblib worker processes, logged to the server."""
    root = tmp_path_factory.mktemp("sweep")
    command = [sys.executable, "-m", "splitcomp.tasks.run", "-m", *TINY, f"policy={','.join(POLICIES)}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"tracking.uri={mlflow_server.url}",
               f"tracking.experiment={EXPERIMENT}", f"hydra.sweep.dir={root}/sweep",
               f"profile.cache_dir={root}/profiles"]
    result = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {"dir": root / "sweep", "result": result, "server": mlflow_server, "experiment": EXPERIMENT,
            "policies": POLICIES}
