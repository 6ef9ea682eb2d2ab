"""Running the edge server as its own OS process, and serving on a listening socket."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from splitcomp.errors import PeerError
from splitcomp.files import atomic_write_text

log = logging.getLogger("splitcomp")
server_log = logging.getLogger("splitcomp.server")


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket; a port in use or a bad host is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PeerError(f"port {port} on {host} is already in use; pick another with server.port=N "
                            "(0 picks a free one)") from None
        raise PeerError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check server.host") from None
    listener.listen(socket.SOMAXCONN)  # a burst of devices (or of hostile connections) is accepted, then judged
    return listener


def write_ready_file(path: str | Path, host: str, port: int) -> None:
    """Atomically announce the bound address to the process that started us."""
    atomic_write_text(path, json.dumps({"host": host, "port": port, "pid": os.getpid()}))


def serve_until_stopped(server: Any, host: str, port: int, ready_file: str | None = None,
                        run_pid: int | None = None) -> None:
    """Listen on ``host:port`` and serve until SIGTERM/SIGINT, writing ``ready_file`` once listening.

    A server started by a run (``run_pid``: its parent) ends with that run, also when the run's
    process is killed (a sweep job on a cluster node) and cannot stop it: orphaned, its parent changes."""
    listener = bind_listener(host, port)
    port = listener.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1") and server.settings.secret is None:
        server_log.warning("listening on %s without authentication: anyone who reaches this port can use the "
                    "server; give both sides the same secret (server.auth_secret_file or "
                    "$SPLITCOMP_AUTH_SECRET)", host)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    if ready_file:
        write_ready_file(ready_file, host, port)
    print(f"splitcomp edge server listening on {host}:{port} ({server.tails.device}); Ctrl-C stops it",
          flush=True)
    thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    thread.start()
    while thread.is_alive():
        if run_pid is not None and os.getppid() != int(run_pid):
            server_log.warning("the run that started this server (process %s) is gone; stopping", run_pid)
            run_pid = None
            server.stop()
        thread.join(timeout=0.5)
    listener.close()


class ServerProcess:
    """A ``splitcomp-serve`` child process started from the run's resolved config."""

    def __init__(self, config_file: Path, work_dir: Path, prefix: list[str] | None = None,
                 start_timeout_s: float = 120.0, extra_overrides: list[str] | None = None) -> None:
        self.config_file = Path(config_file)
        self.extra_overrides = list(extra_overrides or [])
        self.work_dir = Path(work_dir)
        self.prefix = list(prefix or [])
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.host = ""
        self.port = 0

    @property
    def ready_file(self) -> Path:
        return self.work_dir / "ready.json"

    def start(self) -> ServerProcess:
        """Launch the process and wait until it listens."""
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> ServerProcess:
        """Launch the process without waiting (it loads its model while the caller works on)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ready = self.ready_file
        ready.unlink(missing_ok=True)
        command = [*self.prefix, sys.executable, "-m", "splitcomp.tasks.serve",
                   "--config-path", str(self.config_file.parent.resolve()),
                   "--config-name", self.config_file.stem,
                   f"hydra.run.dir={self.work_dir.resolve()}", "hydra.output_subdir=null",
                   f"++server.ready_file={ready.resolve()}", f"++server.run_pid={os.getpid()}",
                   *self.extra_overrides]
        log_file = open(self.work_dir / "server.log", "ab")  # noqa: SIM115 (kept open for the child)
        self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log_file.close()
        return self

    def wait_ready(self) -> None:
        ready = self.ready_file
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if ready.exists():
                info = json.loads(ready.read_text())
                self.host, self.port = info["host"], int(info["port"])
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise PeerError(f"the edge server process exited during start-up: {self._last_error()}")
            time.sleep(0.05)
        self.stop()
        raise PeerError(f"the edge server did not start within {self.start_timeout_s:.0f} s; "
                        f"see {self.work_dir / 'server.log'}")

    def _last_error(self) -> str:
        lines = (self.work_dir / "server.log").read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["no output"])[-1].removeprefix("error: ")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill without warning (fault injection)."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.kill()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.launch() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
