"""Building a run's objects from a composed config: the one assembly path.

Every task, benchmark and test builds through here: :func:`build_workload` (model, codec, split
plan), :func:`build_scenario` (workload, profiles, channel bound to the link, server load),
:func:`make_env` (one policy's :class:`~splitcomp.loop.RunEnv`), :func:`build_server` (the edge
server of ``splitcomp-serve``), and :class:`ExperimentSession`, which holds what the policies
compared in one experiment share (the scenario, the link and, on the real runtime, the edge-server
process) and tears it down on exit.

Named config options (``compare_with``, a benchmark's estimator) are composed by Hydra from the
config search path, never read from a file path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from splitcomp.configs import config_dir, project_root
from splitcomp.errors import ConfigError
from splitcomp.link.codecs import Codec
from splitcomp.link.frame_bytes import FrameBytes, request_overhead, wire_frame_bytes
from splitcomp.link.shaping import ScenarioClock
from splitcomp.link.wire import Limits
from splitcomp.loop import RunEnv, run_requests
from splitcomp.profile import get_profiles
from splitcomp.profile.latency import LatencyModel, Profiles
from splitcomp.profile.profiler import resolve_server_device
from splitcomp.profile.timing import pin_to_cores
from splitcomp.records import RequestRecord
from splitcomp.runtime.fingerprint import model_fingerprint
from splitcomp.runtime.process import serve_until_stopped
from splitcomp.runtime.security import auth_secret, server_tls
from splitcomp.runtime.server import EdgeServer, LoadEffects, ServerSettings
from splitcomp.runtime.session import SocketSession, launch_server, open_socket_session
from splitcomp.runtime.tails import TailBank
from splitcomp.scenario.load import LoadModel
from splitcomp.scenario.trace import Trace
from splitcomp.sim import Factors, SimBackend
from splitcomp.split import SplitPlan, analyze
from splitcomp.workload.fitting import fit_missing_head, fitted_model

log = logging.getLogger("splitcomp")
FITTED_MODEL = f"{fitted_model.__module__}.{fitted_model.__name__}"


# --- composing config ------------------------------------------------------------------------------

@contextlib.contextmanager
def _hydra_initialized() -> Iterator[None]:
    """Hydra's compose API inside a running task (its search path, --config-dir included), else
    on the shipped configs."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The resolved run config for ``overrides`` (as given to ``splitcomp-run``)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def group_option(group: str, name: str, what: str) -> DictConfig:
    """The config of option ``name`` of config group ``group`` (for example ``policy``, ``oracle``),
    composed by Hydra; ``what`` names the setting that asked for it, for the error."""
    try:
        with _hydra_initialized():
            composed = compose(config_name=f"{group}/{name}")
    except MissingConfigException:
        raise ConfigError(f"{what} names an unknown {group} {name!r}; see conf/{group}/ for the options") from None
    return composed[group]


def policy_config(name: str) -> DictConfig:
    """The config of policy ``name`` (for the comparison runs)."""
    return group_option("policy", name, "compare_with")


# --- the workload ----------------------------------------------------------------------------------

@dataclass
class Workload:
    """The model as both sides build it: weights, example input, codec, split plan, fingerprint."""

    model: nn.Module
    example_input: torch.Tensor
    codec: Codec
    plan: SplitPlan
    fingerprint: dict[str, str]


def example_input(cfg: DictConfig, dataset: Any = None) -> torch.Tensor:
    """A uint8 image batch of one at the dataset's image size: the dataset's first image when
    given (compressing codecs send what real content compresses to), else a blank one."""
    size = int(cfg.dataset.image_size)
    if size < 8:
        raise ConfigError(f"dataset.image_size={size} is too small; use 32 or more")
    if dataset is not None and len(dataset) > 0:
        return dataset[0][0].unsqueeze(0)
    channels = int(cfg.dataset.get("channels", 3))
    return torch.zeros(1, channels, size, size, dtype=torch.uint8)


def build_model(model_cfg: DictConfig, seed: int = 0) -> nn.Module:
    """The ``model`` config's network in eval mode, its random weights (if any) drawn from ``seed``
    so that both sides build the same. A fitted-head model whose head is missing is fitted first,
    as a logged step of its own (see ``fit_missing_head``); instantiating the config only loads."""
    fitted = model_cfg.get("_target_") == FITTED_MODEL
    if fitted and model_cfg.get("fit_if_missing", True):
        fit_missing_head(model_cfg.backbone, model_cfg.dataset, model_cfg.get("checkpoint"), model_cfg.get("fit"))
    torch.manual_seed(seed)
    return (instantiate(model_cfg, fit_if_missing=False) if fitted else instantiate(model_cfg)).eval()


def build_workload(cfg: DictConfig, dataset: Any = None) -> Workload:
    """Model (eval mode), example input, codec, split plan and the model's fingerprint."""
    model = build_model(cfg.model, int(cfg.get("seed", 0)))
    codec = instantiate(cfg.codec)
    rule = instantiate(cfg.bottleneck)
    x = example_input(cfg, dataset)
    plan = analyze(model, x, codec=codec, rule=rule, leaf_modules=tuple(cfg.get("leaf_modules") or ()))
    return Workload(model, x, codec, plan, model_fingerprint(model, tuple(x.shape), x.dtype, codec))


# --- the scenario and one policy's environment -----------------------------------------------------

@dataclass
class Scenario:
    """Everything that is the same for every policy compared in one experiment."""

    work: Workload
    profiles: Profiles
    uplink: Trace
    downlink: Trace | None
    load_model: LoadModel
    link: Any  # a conf/link option: LoopbackLink, ShapedLink or TcLink
    dataset: Any
    n_requests: int
    frames: FrameBytes


def frame_bytes(work: Workload, profiles: Profiles, secret: bool) -> FrameBytes:
    """The wire format's frame bytes, exact for every candidate cut: each head's output on the
    example input, encoded as a request frame (plain values and multi-tensor cuts have longer
    headers than one tensor)."""
    per_cut = {}
    with torch.inference_mode():
        for cut in profiles.cuts:
            if cut.is_device_only:
                continue
            head, _ = work.plan.split(cut.name)
            values = head(work.example_input)
            values = values if isinstance(values, tuple) else (values,)
            per_cut[cut.name] = request_overhead(values, work.codec, cut.bytes_up, secret)
    return wire_frame_bytes(secret).with_cuts(per_cut)


def bind_channel(cfg: DictConfig, link: Any) -> Trace:
    """Bind the config's channel (and downlink, if any) to ``link``; returns the uplink trace."""
    uplink = instantiate(cfg.channel)
    downlink = instantiate(cfg.downlink) if cfg.get("downlink") else None
    link.bind(uplink, downlink)
    return uplink


def build_scenario(cfg: DictConfig, link: Any, needs_images: bool = True) -> Scenario:
    """Dataset, workload, profiles, channel traces (bound to ``link``) and server-load model."""
    dataset = instantiate(cfg.dataset)
    work = build_workload(cfg, dataset)
    n_requests = int(cfg.get("requests") or len(dataset))
    if needs_images:  # each real request classifies one image; the simulator needs none
        n_requests = min(n_requests, len(dataset))
    if n_requests <= 0:
        raise ConfigError("the run has no requests: the dataset is empty or dataset.limit is 0")
    profiles = get_profiles(work.model, work.plan, work.example_input, work.codec, cfg.device, cfg.server,
                            cfg.profile)
    uplink = bind_channel(cfg, link)
    frames = frame_bytes(work, profiles, secret=auth_secret(cfg.server) is not None)
    return Scenario(work, profiles, uplink, link.downlink_trace, instantiate(cfg.server_load), link, dataset,
                    n_requests, frames)


def make_env(cfg: DictConfig, scenario: Scenario, policy_cfg: Any) -> RunEnv:
    """Fresh policy, estimator and arrivals on the shared scenario, for one policy's run.

    The true RTT is the link's (twice its one-way delay) on both runtimes: the real link adds
    that delay and ignores RTT columns of traces, so the simulator does the same."""
    delay = scenario.link.one_way_delay_s
    latency_model = LatencyModel(scenario.profiles, rtt_s=float(cfg.link.get("rtt_s", 0.0) or 0.0),
                                 one_way_delay_s=delay, frames=scenario.frames)
    return RunEnv(candidates=list(scenario.profiles.cuts), latency_model=latency_model,
                  policy=instantiate(policy_cfg), estimator=instantiate(cfg.estimator),
                  arrivals=instantiate(cfg.arrivals), uplink=scenario.uplink, downlink=scenario.downlink,
                  load_model=scenario.load_model, n_requests=scenario.n_requests, seed=int(cfg.seed),
                  rtt_s=2 * delay, timeout_s=float(cfg.link.get("max_transfer_s") or 5.0))


# --- one experiment's shared parts -----------------------------------------------------------------

class ExperimentSession:
    """What the policies of one experiment share: the scenario, the link and, when the runtime
    uses sockets, the edge-server process and the device's connection settings.

    Enter it to build the scenario and launch the server (the server loads its model while the
    caller does other work, such as opening its MLflow run); :meth:`connect` then waits for the
    server and attaches the runtime to it. Everything is torn down on exit."""

    def __init__(self, cfg: DictConfig, out_dir: Path, runtime: Any = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.runtime = instantiate(cfg.runtime) if runtime is None else runtime
        self.clock = ScenarioClock()
        self.scenario: Scenario | None = None
        self.session: SocketSession | None = None
        self._server: Any = None
        self._stack = ExitStack()

    @property
    def needs_sockets(self) -> bool:
        return bool(self.runtime.needs_sockets)

    def __enter__(self) -> ExperimentSession:
        with ExitStack() as stack:
            stack.push(self._stack)  # a failure while building undoes what was built
            cfg = self.cfg
            torch.set_num_threads(int(cfg.device.threads))  # this process is the end device
            pin_to_cores(cfg.device.get("pin_cores"))
            link = instantiate(cfg.link)
            # device side first (a missing head is fitted once; profiles are timed on a quiet machine),
            # then the server process, which loads its model while the caller goes on
            self.scenario = build_scenario(cfg, link, needs_images=self.needs_sockets)
            if self.needs_sockets:
                self._server = launch_server(cfg, link, self.clock, self._stack, self.out_dir)
            stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def connect(self) -> None:
        """Wait for the edge server and attach the runtime to it (nothing to do in the simulator)."""
        if self.needs_sockets and self.session is None:
            assert self.scenario is not None, "enter the session first"
            self.session = open_socket_session(self.cfg, self.scenario, self._server, self.clock)
            self.runtime.attach(self.session)

    def env(self, policy: str | DictConfig, estimator: str | None = None, requests: int | None = None) -> RunEnv:
        """The run environment of one policy (a conf/policy option or a policy config) on this
        scenario; ``estimator`` names a conf/estimator option to use instead of the config's;
        ``requests`` serves only that many of the scenario's requests."""
        assert self.scenario is not None, "enter the session first"
        cfg = self.cfg
        if estimator is not None:
            cfg = cfg.copy()
            cfg.estimator = group_option("estimator", estimator, "the estimator")
        policy_cfg = policy_config(policy) if isinstance(policy, str) else policy
        env = make_env(cfg, self.scenario, policy_cfg)
        return env if requests is None else dataclasses.replace(env, n_requests=min(requests, env.n_requests))

    def run_env(self, env: RunEnv) -> list[RequestRecord]:
        """Records of ``env`` on the session's runtime."""
        self.connect()
        return self.runtime.run(env)

    def run(self, policy: str | DictConfig, estimator: str | None = None,
            requests: int | None = None) -> list[RequestRecord]:
        """Records of one policy on this scenario, on the session's runtime (see :meth:`env`)."""
        self.connect()
        if self.session is not None:
            # A fresh clock per run: scenario time starts at 0 for every policy (the session only
            # moves the clock's origin, which the server sees but the device's own clock does not).
            self.session.clock = ScenarioClock()
        return self.runtime.run(self.env(policy, estimator, requests))

    def simulate(self, policy: str | DictConfig, estimator: str | None = None, device_factors: Factors = (),
                 server_factors: Factors = (), **sim_options: Any) -> list[RequestRecord]:
        """Records of the same run in the simulator (``sim_options``: its ``noise`` and
        ``client_share``, the simulator's defaults otherwise; the factors: see ``SimBackend``)."""
        env = self.env(policy, estimator)
        env = dataclasses.replace(env, sim_options={"noise": None, "client_share": 0.5, **env.sim_options,
                                                    **sim_options})
        backend = SimBackend(env, env.sim_options["noise"], device_factors, server_factors)
        return run_requests(env, backend)


@contextlib.contextmanager
def socket_bench(overrides: Sequence[str], out_dir: Path | None = None) -> Iterator[ExperimentSession]:
    """Compose ``overrides`` on the real runtime (no MLflow), profile, launch the server process and
    yield the connected :class:`ExperimentSession`. Relative paths in the config (checkpoints,
    profile cache, traces) are taken from the project root."""
    cfg = compose_config(["runtime=socket", "runtime.progress=false", *overrides])
    root = project_root()
    with ExitStack() as stack:
        stack.enter_context(contextlib.chdir(root))
        if out_dir is None:
            (root / "outputs" / "bench").mkdir(parents=True, exist_ok=True)
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=root / "outputs" / "bench")))
        session = stack.enter_context(ExperimentSession(cfg, Path(out_dir)))
        session.connect()
        yield session


# --- the edge server -------------------------------------------------------------------------------

def build_server(cfg: DictConfig) -> EdgeServer:
    """The edge server for this config: same model, plan and load model as the device side."""
    torch.set_num_threads(int(cfg.server.threads))
    pin_to_cores(cfg.server.get("pin_cores"))
    work = build_workload(cfg)
    device = resolve_server_device(cfg.server.get("device", "auto"))
    load_model = instantiate(cfg.server_load)
    link = instantiate(cfg.link)
    work.model.to(device)  # heads and tails share its parameters: all of them move
    return EdgeServer(TailBank(work.plan, work.example_input.to(device), device), work.fingerprint,
                      LoadEffects(load_model), downlink_factory(cfg, link), server_settings(cfg.server),
                      codec=work.codec)


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


def downlink_factory(cfg: DictConfig, link: Any) -> Callable[[float], Any] | None:
    """(pacer, clock) for responses when the link shapes the downlink in user space."""
    if not hasattr(link, "bind") or not hasattr(link, "downlink_pacer"):
        return None
    bind_channel(cfg, link)

    def make(origin: float) -> Any:
        pacer = link.downlink_pacer()
        return None if pacer is None else (pacer, ScenarioClock(origin))

    return make


def serve(cfg: DictConfig) -> None:
    """Build the config's edge server and serve until stopped (``splitcomp-serve``)."""
    server = build_server(cfg)
    run_pid = cfg.server.get("run_pid")
    serve_until_stopped(server, str(cfg.server.host), int(cfg.server.port), cfg.server.get("ready_file") or None,
                        None if run_pid is None else int(run_pid))
