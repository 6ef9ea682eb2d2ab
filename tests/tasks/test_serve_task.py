"""``splitcomp-serve`` started by a run ends with that run, also when the run's process is killed."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from splitcomp.tasks.common import CONF_DIR

# A stand-in for a run: starts a server process as a run does, prints its pid, then waits to be killed.
RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from splitcomp.runtime.process import ServerProcess
    server = ServerProcess(Path(sys.argv[1]), Path(sys.argv[2])).start()
    print(server.proc.pid, flush=True)
    time.sleep(300)
""")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that does not reap it."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_server_of_a_killed_run_stops(tmp_path):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=torchvision", "model.name=mobilenet_v3_small", "model.weights=null",
                                           "dataset=samples", "dataset.image_size=64", "link=loopback"])
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    run = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / "config.yaml"), str(tmp_path / "server")],
                           stdout=subprocess.PIPE, text=True, env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    server_pid = None
    try:
        server_pid = int(run.stdout.readline())
        assert alive(server_pid)
        run.send_signal(signal.SIGKILL)  # no chance to stop its server
        run.wait(timeout=10)
        deadline = time.monotonic() + 20
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid), "the server outlived the run that started it"
        assert "is gone; stopping" in (tmp_path / "server" / "server.log").read_text()
    finally:
        run.kill()
        if server_pid is not None and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
