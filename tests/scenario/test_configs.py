"""Every channel/ and server_load/ option instantiates; the trace option works as users override it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from splitcomp.scenario import LoadModel, Trace

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

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


def test_the_default_channel_and_load_ship_in_the_package_and_vary(monkeypatch, tmp_path):
    """The default run's WiFi window and slowdown bursts need no trace folder: their files are under
    conf/ (inside the wheel), found from any working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPLITCOMP_TRACES", str(tmp_path / "none"))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    trace, load = instantiate(cfg.channel), instantiate(cfg.server_load)
    assert trace.format == "lumos_wifi" and 35 < trace.duration < 45
    assert trace.rates_bps.min() < 15e6 < 40e6 < trace.rates_bps.max()  # splits win in between
    slowdowns = {load.slowdown_at(t) for t in range(0, 120)}
    assert min(slowdowns) == 1.0 and max(slowdowns) >= 3.0
    assert (CONF_DIR / "channel" / "traces" / "ATTRIBUTION.md").is_file()
