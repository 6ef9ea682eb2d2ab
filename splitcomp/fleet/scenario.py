"""A fleet's description (the ``fleet`` config group) and the run environment of each device.

Device ``i`` replays trace ``traces[i % len(traces)]`` from ``(i // len(traces)) *
window_spacing_s`` seconds on (so devices on the same file see different windows of it), sends
requests at ``rate_hz`` with its own seed, and runs its own instance of the policy. Arrivals
are ``poisson`` (independent devices) or ``periodic``: every device on the same frame clock,
as cameras triggered together are, so that their requests come due at the same instants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from splitcomp.errors import ConfigError
from splitcomp.loop import RunEnv
from splitcomp.policy.base import Policy
from splitcomp.policy.estimators import RateEstimator
from splitcomp.profile.latency import CutProfile, LatencyModel
from splitcomp.scenario.arrivals import Arrivals, Periodic, Poisson
from splitcomp.scenario.loaders import trace_window
from splitcomp.scenario.trace import Trace

ARRIVALS: dict[str, Callable[[float], Arrivals]] = {
    "poisson": Poisson, "periodic": lambda rate_hz: Periodic(1.0 / rate_hz)}


@dataclass(frozen=True)
class FleetSpec:
    """N devices on one edge server (see the module docstring)."""

    devices: int = 16
    traces: tuple[str, ...] = ()
    window_s: float = 60.0
    window_spacing_s: float = 30.0
    rate_hz: float = 5.0
    requests: int = 300  # per device
    seed: int = 0
    timeout_s: float = 2.0  # an upload or answer taking longer falls back to the device
    arrivals: str = "poisson"  # or "periodic"

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> FleetSpec:
        """The spec from a config mapping; unknown keys and bad values in one sentence."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known - {"_target_"})
        if unknown:
            raise ConfigError(f"fleet config has unknown keys {unknown}; known: {sorted(known)}")
        values = dict(cfg)
        values.pop("_target_", None)
        if "traces" in values:
            traces = values["traces"]
            values["traces"] = (traces,) if isinstance(traces, str) else tuple(str(t) for t in traces or ())
        try:
            spec = cls(**values)
        except TypeError as exc:
            raise ConfigError(f"fleet config is malformed: {exc}") from None
        spec.check()
        return spec

    def check(self) -> None:
        if not isinstance(self.devices, int) or self.devices < 1:
            raise ConfigError(f"fleet.devices must be a whole number of at least 1, got {self.devices!r}.")
        if not self.traces:
            raise ConfigError("fleet.traces is empty; list at least one trace file (see ../shared/traces).")
        missing = [t for t in self.traces if not Path(t).is_file()]
        if missing:
            raise ConfigError(f"fleet.traces names {len(missing)} missing file(s), first {missing[0]!r}; "
                              "give paths to existing trace files.")
        for name in ("window_s", "rate_hz", "timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"fleet.{name} must be positive, got {getattr(self, name)!r}.")
        if self.arrivals not in ARRIVALS:
            raise ConfigError(f"fleet.arrivals must be one of {sorted(ARRIVALS)}, got {self.arrivals!r}.")
        if self.window_spacing_s < 0:
            raise ConfigError(f"fleet.window_spacing_s must be at least 0, got {self.window_spacing_s!r}.")
        if not isinstance(self.requests, int) or self.requests < 1:
            raise ConfigError(f"fleet.requests must be a whole number of at least 1, got {self.requests!r}.")

    def uplinks(self) -> list[Trace]:
        """Each device's channel (files read once)."""
        loaded: dict[str, Trace] = {}
        out = []
        for i in range(self.devices):
            path = self.traces[i % len(self.traces)]
            if path not in loaded:
                loaded[path] = trace_window(path)
            start = (i // len(self.traces)) * self.window_spacing_s
            whole = loaded[path]
            out.append(whole.window(start % max(whole.duration, 1e-9), self.window_s))
        return out


def fleet_spec(**values: Any) -> FleetSpec:
    """The ``_target_`` of ``conf/fleet/*.yaml``."""
    return FleetSpec.from_cfg(values)


def device_envs(spec: FleetSpec, candidates: list[CutProfile], latency_model: LatencyModel,
                make_policy: Callable[[], Policy], make_estimator: Callable[[], RateEstimator],
                rtt_s: float = 0.0) -> list[RunEnv]:
    """One run environment per device: its own trace window, arrivals, seed, policy and estimator."""
    return [RunEnv(candidates=candidates, latency_model=latency_model, policy=make_policy(),
                   estimator=make_estimator(), arrivals=ARRIVALS[spec.arrivals](spec.rate_hz), uplink=uplink,
                   n_requests=spec.requests, seed=spec.seed * 100_003 + i, rtt_s=rtt_s,
                   timeout_s=spec.timeout_s, sim_options={"noise": 0.0})
            for i, uplink in enumerate(spec.uplinks())]


def load_fleet(name_or_path: str) -> FleetSpec:
    """A fleet from ``conf/fleet/NAME.yaml`` or from a YAML file's path; errors in one sentence."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from splitcomp.configs import config_dir

    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / "fleet" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no fleet config {name_or_path!r}; name one in conf/fleet/ or give a YAML file.")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"fleet config {path} cannot be read ({exc}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"fleet config {path} must be a mapping of keys to values.")
    return FleetSpec.from_cfg(values)
