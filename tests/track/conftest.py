"""A real ``mlflow server`` (PostgreSQL-backed where PostgreSQL runs, in a network namespace of the
session where one can be made) and one small simulated sweep logged to it, shared by the tests of
this folder (starting either costs tens of seconds); a Ray cluster beside the server for the
tests of launchers beyond one machine."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "sweep_test"
POLICIES = ("device_only", "server_only", "oracle")
TINY = ["runtime=sim", "model=torchvision", "model.name=mobilenet_v3_small", "dataset=samples",
        "dataset.image_size=64", "channel=square", "server_load=none", "compare_with=[]", "profile.batch_sizes=[1,2]", "profile.repeats=2",
        "profile.check=false",  # the jobs profile side by side: the sweep is tested here, not profiles
        "runtime.noise=0"]  # no compute noise: the oracle bounds every policy of the same profile


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
    """A tracking server: ``url`` from this process, ``inner_url`` from processes in its network
    namespace ``netns`` (None: no namespace, both the same)."""

    def __init__(self, url: str, backend: str, inner_url: str | None = None, netns: str | None = None) -> None:
        self.url = url
        self.backend = backend  # "postgresql" or "sqlite"
        self.inner_url = inner_url or url
        self.netns = netns

    def api(self, path: str, body: dict | None = None) -> dict:
        """GET (no body) or POST (JSON body) on the REST API."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return response.read().decode()

    def inside(self, command: list[str]) -> list[str]:
        """``command`` run in the server's network namespace, where ``inner_url`` reaches it."""
        return in_netns(self.netns, command)


def in_netns(netns: str | None, command: list[str]) -> list[str]:
    """``command`` run inside the network namespace ``netns`` (as it is when None)."""
    return ["ip", "netns", "exec", netns, *command] if netns else command


def postgres_missing() -> str | None:
    """Why a PostgreSQL-backed server cannot run here, or None."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and shutil.which("initdb") is None:
        return "PostgreSQL is not installed (Debian package postgresql; bash .ci/setup installs it)"
    if importlib.util.find_spec("psycopg2") is None:
        return "the PostgreSQL driver psycopg2 is not installed (pip install psycopg2-binary; .ci/setup installs it)"
    return None


@pytest.fixture(scope="session")
def netns():
    """A network namespace of the session (experiments/netns.sh), for a Ray cluster that stays off
    the host's network: (name, its address from here), or None without root."""
    name = f"splitcomp-test-{os.getpid()}"
    result = subprocess.run(["bash", str(REPO / "experiments" / "netns.sh"), "create", name], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        yield None
        return
    try:
        yield name, result.stdout.strip()
    finally:
        subprocess.run(["bash", str(REPO / "experiments" / "netns.sh"), "delete", name], timeout=60)


@pytest.fixture(scope="session")
def mlflow_server(netns, tmp_path_factory):
    """The tests' tracking server, started for the session and stopped after it: PostgreSQL-backed
    (experiments/tracking_server.sh, what parallel sweeps should log to) where PostgreSQL runs,
    else SQLite-backed; in the session's network namespace when there is one (listening on all of
    its interfaces: its loopback and the link to this host), else on 127.0.0.1."""
    name, address = netns or (None, "127.0.0.1")
    host = "0.0.0.0" if name else "127.0.0.1"
    if postgres_missing() is None:
        # not under pytest's temporary root: the postgres user must be able to enter the folder
        folder = Path(tempfile.mkdtemp(prefix="splitcomp-tracking-"))
        folder.chmod(0o755)
        try:
            inner = run_script("tracking_server.sh", "start", folder, "", host, netns=name)
            yield Server(inner.replace("127.0.0.1", address), "postgresql", inner, name)
        finally:
            run_script("tracking_server.sh", "stop", folder, netns=name)
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield from sqlite_server(tmp_path_factory.mktemp("mlflow_server"), name, address, host)


def sqlite_server(root: Path, netns: str | None, address: str, host: str):
    port = free_port()
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        in_netns(netns, [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers",
                         "1", "--backend-store-uri", f"sqlite:///{root}/m.db", "--artifacts-destination",
                         str(root / "artifacts")]),
        stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    server = Server(f"http://{address}:{port}", "sqlite", f"http://127.0.0.1:{port}", netns)
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


def run_script(script: str, command: str, folder: Path, *args: str, netns: str | None = None) -> str:
    """``bash experiments/SCRIPT COMMAND FOLDER ARGS`` (in ``netns``); its last output line (``start``:
    the address)."""
    env = dict(clean_env(), MLFLOW_WORKERS="1")  # one server worker: it starts in half the time
    result = subprocess.run(in_netns(netns, ["bash", str(REPO / "experiments" / script), command, str(folder), *args]),
                            env=env, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return (result.stdout.strip().splitlines() or [""])[-1]


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


# --- beyond one machine --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster(mlflow_server, tmp_path_factory):
    """experiments/ray_cluster.sh in the session's network namespace, beside the tracking server: a
    Ray head node and one worker node (one CPU each); yields the address, and ends every process of
    both nodes after the module."""
    for module, package in (("ray", "ray"), ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed (pip install -e '.[cluster]'; .ci/setup installs it)")
    if mlflow_server.netns is None:
        pytest.skip("no network namespace (needs root and iproute2): a multi-node Ray cluster would listen on "
                    "this host's network address")
    folder = tmp_path_factory.mktemp("ray_cluster")
    try:
        yield run_script("ray_cluster.sh", "start", folder, "1", "1", netns=mlflow_server.netns)
    finally:
        run_script("ray_cluster.sh", "stop", folder)
