"""Every channel/ and server_load/ option instantiates; the trace option works as users override it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from splitcomp.profile.latency import LatencyModel, Profiles
from splitcomp.records import ServerLoad
from splitcomp.scenario import LoadModel, Trace

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
# Two profiles of the default workload measured here an hour apart: where the best cut lies moved
# between them (the second one's device-only head is 20 % and its full-offload tail 40 % faster).
MEASURED_PROFILES = [ROOT / "experiments" / "profiles" / "lite0_fashion_mnist_raw.json",
                     ROOT / "tests" / "fixtures" / "lite0_fashion_mnist_raw_remeasured.json"]

SYNTHETIC = ["constant", "step", "square", "random_walk", "markov"]
PRESETS = sorted(
    p.stem for p in (CONF_DIR / "channel").glob("*.yaml") if p.stem not in SYNTHETIC and p.stem != "trace"
)
LOADS = ["none", "batch", "clients", "trace"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_channel_options_instantiate(name):
    trace = instantiate(OmegaConf.load(CONF_DIR / "channel" / f"{name}.yaml"))
    assert isinstance(trace, Trace) and trace.duration > 0


def test_square_default_is_time_varying():
    trace = instantiate(OmegaConf.load(CONF_DIR / "channel" / "square.yaml"))
    assert trace.rates_bps.min() == 5e6 and trace.rates_bps.max() == 100e6


@pytest.mark.parametrize("name", PRESETS)
def test_real_trace_presets_instantiate(traces_dir, monkeypatch, name):
    monkeypatch.setenv("SPLITCOMP_TRACES", str(traces_dir))
    cfg = OmegaConf.load(CONF_DIR / "channel" / f"{name}.yaml")
    trace = instantiate(cfg)
    assert isinstance(trace, Trace) and trace.format == cfg.format and trace.mean_rate_bps > 0


def test_presets_find_the_traces_without_the_variable(traces_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("SPLITCOMP_TRACES", raising=False)
    monkeypatch.chdir(tmp_path)  # relative paths fall back to the project root
    assert instantiate(OmegaConf.load(CONF_DIR / "channel" / "wifi_walk.yaml")).format == "multipath"


def test_trace_option_with_user_overrides(traces_dir):
    path = traces_dir / "lumos5g_umn/4G/4g_trace_driving_50015_dr"
    overrides = ["+channel=trace", f"channel.path={path}", "channel.start=10", "channel.duration=60", "channel.speedup=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=overrides)
    trace = instantiate(cfg.channel)
    assert trace.duration == 30.0 and trace.format == "lumos5g"


def test_trace_option_needs_a_path():
    with pytest.raises(MissingMandatoryValue, match="path"):
        instantiate(OmegaConf.load(CONF_DIR / "channel" / "trace.yaml"))


@pytest.mark.parametrize("name", LOADS)
def test_server_load_options_instantiate(name, monkeypatch):
    monkeypatch.chdir(CONF_DIR.parent.parent)  # the example file is found from outside the project too
    load = instantiate(OmegaConf.load(CONF_DIR / "server_load" / f"{name}.yaml"))
    assert isinstance(load, LoadModel) and load.kind == name
    assert load.batch_at(0.0) >= 1 and load.slowdown_at(0.0) >= 1.0 and load.clients_at(0.0) >= 0


def default_config():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config")


def test_the_default_channel_and_load_ship_in_the_package_and_vary(monkeypatch, tmp_path):
    """The default run's WiFi window and batch bursts need no trace folder: their files are under
    conf/ (inside the wheel), found from any working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPLITCOMP_TRACES", str(tmp_path / "none"))
    cfg = default_config()
    trace, load = instantiate(cfg.channel), instantiate(cfg.server_load)
    assert trace.format == "lumos_wifi" and 35 < trace.duration < 45
    assert trace.rates_bps.min() < 8e6 and trace.rates_bps.max() > 20e6
    batches = {load.batch_at(t) for t in range(0, 120)}
    assert min(batches) == 1 and max(batches) >= 4
    assert (CONF_DIR / "channel" / "traces" / "ATTRIBUTION.md").is_file()


def oracle_choices(cfg, profiles: Profiles) -> dict[str, float]:
    """Shares of full offloading, splits and device-only among the cuts the oracle picks on the
    config's channel and load, one request after the other (closed loop) for ``cfg.requests``."""
    trace, load = instantiate(cfg.channel), instantiate(cfg.server_load)
    model = LatencyModel(profiles, one_way_delay_s=float(cfg.link.delay_s))
    t, kinds = 0.0, []
    for _ in range(int(cfg.requests)):
        state = ServerLoad(batch_size=load.batch_at(t), slowdown=load.slowdown_at(t))
        latency = [model.predict_on_trace(cut, trace, t, load=state).total_s for cut in profiles.cuts]
        best = profiles.cuts[latency.index(min(latency))]
        kinds.append("offload" if best.is_full_offload else "device" if best.is_device_only else "split")
        t += min(latency)
    return {kind: kinds.count(kind) / len(kinds) for kind in ("offload", "split", "device")}


def on_device(profiles: Profiles, slowdown: float) -> Profiles:
    """``profiles`` with the head times of a device ``slowdown`` times slower than this machine."""
    factor = slowdown / float(profiles.key["device"]["slowdown"])
    return dataclasses.replace(profiles, cuts=[
        dataclasses.replace(c, head_s={b: v * factor for b, v in c.head_s.items()}) for c in profiles.cuts])


@pytest.mark.parametrize("path", MEASURED_PROFILES, ids=lambda p: p.stem)
def test_the_default_scenario_puts_a_natural_bottleneck_split_in_play(path, monkeypatch):
    """On the default channel, load and device, the oracle splits at a natural bottleneck for a
    good share of the requests and offloads fully for others, on either measured profile."""
    monkeypatch.chdir(ROOT)
    cfg = default_config()
    shares = oracle_choices(cfg, on_device(Profiles.load(path), float(cfg.device.slowdown)))
    assert shares["split"] >= 0.15 and shares["offload"] >= 0.15, shares
