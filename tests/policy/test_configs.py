"""Every policy, estimator, arrivals and sim-runtime option instantiates through its ``_target_``."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splitcomp.policy import Policy, RateEstimator
from splitcomp.scenario.arrivals import Arrivals
from splitcomp.sim import SimRuntime

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = {"policy": Policy, "estimator": RateEstimator, "arrivals": Arrivals}


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_option_instantiates(group, option):
    obj = instantiate(OmegaConf.load(CONF / group / f"{option}.yaml"))
    assert isinstance(obj, GROUPS[group])
    assert obj.name == option


def test_every_group_has_its_options():
    assert {p.stem for p in (CONF / "policy").glob("*.yaml")} >= {
        "device_only", "server_only", "static", "best_static", "dynamic", "oracle", "neurosurgeon", "bandit"}
    assert {p.stem for p in (CONF / "estimator").glob("*.yaml")} == {"last", "ewma", "harmonic", "window", "kalman", "oracle"}
    assert {p.stem for p in (CONF / "arrivals").glob("*.yaml")} == {"closed_loop", "periodic", "poisson"}


def test_sim_runtime_config():
    runtime = instantiate(OmegaConf.load(CONF / "runtime" / "sim.yaml"))
    assert isinstance(runtime, SimRuntime)
