"""Setting up the real link for a run: the link, the edge-server process, background clients."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from splitcomp.link.shaping import ScenarioClock
from splitcomp.redact import save_private_config
from splitcomp.runtime.background import BackgroundClients
from splitcomp.runtime.client import EdgeClient, parse_address
from splitcomp.runtime.device import Device
from splitcomp.runtime.process import ServerProcess
from splitcomp.runtime.security import auth_secret, client_tls
from splitcomp.runtime.socket_runtime import SocketParts

log = logging.getLogger("splitcomp")


class SocketSession:
    """The link, server and device shared by the policies compared in one experiment."""

    def __init__(self, cfg: DictConfig, scenario: Any, host: str, port: int, clock: ScenarioClock) -> None:
        self.cfg = cfg
        self.scenario = scenario
        self.host, self.port = host, port
        self.clock = clock
        self.device = Device(scenario.work.model, scenario.work.plan, float(cfg.device.slowdown))
        self.secret = auth_secret(cfg.server)
        self.tls = client_tls(cfg.server)

    def connect(self, link: Any = None, unshaped_answers: bool = False) -> EdgeClient:
        work = self.scenario.work
        client = EdgeClient(self.host, self.port, work.fingerprint, self.clock,
                            link=self.scenario.link if link is None else link,
                            connect_timeout_s=float(self.cfg.server.connect_timeout_s),
                            io_timeout_s=float(self.cfg.server.io_timeout_s), secret=self.secret, tls=self.tls,
                            classes=work.plan.cuts[-1].elements // work.example_input.shape[0],
                            unshaped_answers=unshaped_answers)
        client.connect()
        return client

    def parts(self, env: Any) -> SocketParts:
        """Fresh clock and background load for one policy's run over the same scenario."""
        self.clock.restart()
        background = None
        load = self.scenario.load_model
        if getattr(load, "kind", "none") == "clients":
            cut = self.scenario.work.plan.cut(load.cut)
            head_run = self.device.run_head(cut.index, self.scenario.work.example_input)
            background = BackgroundClients(load, lambda: self.connect(_Unshaped(), unshaped_answers=True),
                                           head_run.values, self.clock, cut_index=cut.index, rate_hz=load.rate_hz,
                                           seed=load.seed)
        dataset = self.scenario.dataset
        samples = (dataset[i] for i in range(min(len(dataset), env.n_requests)))
        return SocketParts(self.device, samples, self.scenario.work.codec, self.scenario.link, self.connect,
                           self.clock, background)


class _Unshaped:
    """Background clients connect directly: their traffic is load on the server, not on our link."""

    def connect(self, host: str, port: int, timeout: float) -> Any:
        import socket

        return socket.create_connection((host, port), timeout=timeout)


def launch_server(cfg: DictConfig, link: Any, clock: ScenarioClock, stack: ExitStack,
                  out_dir: Path) -> ServerProcess | None:
    """Set up the link and launch the edge-server process (None when ``server.address`` names a
    running one). The process loads its model while the device side profiles; all is undone by
    ``stack``. The server's config file holds no secret: the process reads it from the same file
    or inherits the same environment variable."""
    auth_secret(cfg.server)  # a misplaced or weak secret is one clear error before anything starts
    link.setup(clock)
    stack.callback(link.teardown)
    if cfg.server.get("address"):
        return None
    server_cfg = OmegaConf.merge(cfg, {"server": {"host": link.server_bind_host(), "port": 0}})
    config_file = save_private_config(server_cfg, out_dir / "server" / "server_config.yaml")
    return stack.enter_context(ServerProcess(config_file, out_dir / "server", prefix=link.server_command_prefix()))


def open_socket_session(cfg: DictConfig, scenario: Any, server: ServerProcess | None,
                        clock: ScenarioClock) -> SocketSession:
    """Wait for the server launched by :func:`launch_server` (or parse ``server.address``)."""
    link = scenario.link
    if server is None:
        host, port = parse_address(str(cfg.server.address))
    else:
        server.wait_ready()
        host, port = link.server_connect_host(), server.port
        log.info("edge server process %d on %s:%d", server.proc.pid, host, port)
    return SocketSession(cfg, scenario, host, port, clock)
