"""``splitcomp-serve``: the edge server alone (same config as ``splitcomp-run``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from splitcomp.errors import ConfigError
from splitcomp.link.wire import Limits
from splitcomp.profile.timing import pin_to_cores
from splitcomp.runtime.process import bind_listener, write_ready_file
from splitcomp.runtime.security import auth_secret, server_tls
from splitcomp.runtime.server import EdgeServer, LoadEffects, ServerSettings
from splitcomp.runtime.tails import TailBank
from splitcomp.tasks.build import build_workload, torch_device
from splitcomp.tasks.common import CONF_DIR, user_errors_are_one_line

log = logging.getLogger("splitcomp.server")


def build_server(cfg: DictConfig) -> EdgeServer:
    """The edge server for this config: same model, plan and load model as the device side."""
    torch.set_num_threads(int(cfg.server.threads))
    pin_to_cores(cfg.server.get("pin_cores"))
    work = build_workload(cfg)
    device = torch_device(str(cfg.server.device))
    load_model = instantiate(cfg.server_load)
    link = instantiate(cfg.link)
    downlink = downlink_factory(cfg, link)
    work.model.to(device)  # heads and tails share its parameters: all of them move
    return EdgeServer(TailBank(work.plan, work.example_input.to(device), device), work.fingerprint,
                      LoadEffects(load_model), downlink, server_settings(cfg.server), codec=work.codec)


def server_settings(server_cfg: DictConfig) -> ServerSettings:
    """Deadlines, limits, secret and TLS of the server from the ``server`` config group."""
    defaults = ServerSettings()
    max_payload = int(server_cfg.get("max_payload_bytes", defaults.limits.max_payload_bytes))
    inflight = int(server_cfg.get("max_inflight_bytes", defaults.max_inflight_bytes))
    if max_payload > inflight:
        raise ConfigError(f"server.max_payload_bytes={max_payload} exceeds server.max_inflight_bytes={inflight}: "
                          "no frame that large could ever be held; raise the budget or lower the limit")
    clients = int(server_cfg.get("max_clients", defaults.max_clients))
    per_address = int(server_cfg.get("max_clients_per_address", defaults.max_clients_per_address))
    if clients < 1 or per_address < 1:
        raise ConfigError("server.max_clients and server.max_clients_per_address must be at least 1")
    return ServerSettings(
        io_timeout_s=float(server_cfg.io_timeout_s),
        handshake_timeout_s=float(server_cfg.get("handshake_timeout_s", defaults.handshake_timeout_s)),
        idle_timeout_s=float(server_cfg.get("idle_timeout_s", defaults.idle_timeout_s)),
        min_rate_bps=float(server_cfg.get("min_rate_bps", defaults.min_rate_bps)),
        max_batch=int(server_cfg.max_batch), max_clients=clients, max_clients_per_address=per_address,
        batching=_batching(server_cfg), max_wait_s=float(server_cfg.get("max_wait_s", defaults.max_wait_s)),
        max_inflight_bytes=inflight, secret=auth_secret(server_cfg), tls=server_tls(server_cfg),
        limits=Limits(max_payload_bytes=max_payload, max_decoded_bytes=max_payload))


def _batching(server_cfg: DictConfig) -> bool:
    """``server.batching``: on or off (YAML reads both as booleans)."""
    value = server_cfg.get("batching", False)
    if not isinstance(value, bool):
        raise ConfigError(f"server.batching must be on or off, got {value!r}")
    if value and float(server_cfg.get("max_wait_s", 0.0)) < 0:
        raise ConfigError("server.max_wait_s must be at least 0 (seconds a batch waits for more requests)")
    return value


def downlink_factory(cfg: DictConfig, link: Any) -> Any:
    """(pacer, clock) for responses when the link shapes the downlink in user space."""
    if not hasattr(link, "bind") or not hasattr(link, "downlink_pacer"):
        return None
    from splitcomp.link.shaping import ScenarioClock

    uplink = instantiate(cfg.channel)
    downlink = instantiate(cfg.downlink) if cfg.get("downlink") else None
    link.bind(uplink, downlink)

    def make(origin: float) -> Any:
        pacer = link.downlink_pacer()
        return None if pacer is None else (pacer, ScenarioClock(origin))

    return make


def serve(cfg: DictConfig) -> None:
    server = build_server(cfg)
    host = str(cfg.server.host)
    listener = bind_listener(host, int(cfg.server.port))
    port = listener.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1") and server.settings.secret is None:
        log.warning("listening on %s without authentication: anyone who reaches this port can use the "
                    "server; give both sides the same secret (server.auth_secret_file or "
                    "$SPLITCOMP_AUTH_SECRET)", host)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    if cfg.server.get("ready_file"):
        write_ready_file(cfg.server.ready_file, host, port)
    print(f"splitcomp edge server listening on {host}:{port} ({server.tails.device}); Ctrl-C stops it",
          flush=True)
    # A server started by a run (server.run_pid: its parent) ends with that run, also when the run's
    # process is killed (a sweep job on a cluster node) and cannot stop it: orphaned, its parent changes.
    run_pid = cfg.server.get("run_pid")
    thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    thread.start()
    while thread.is_alive():
        if run_pid is not None and os.getppid() != int(run_pid):
            log.warning("the run that started this server (process %s) is gone; stopping", run_pid)
            run_pid = None
            server.stop()
        thread.join(timeout=0.5)
    listener.close()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
