"""Natural-bottleneck rules, on a uint8-input model, and their config group."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from splitcomp.split import AllCutsRule, BytesRule, PaperRule, SingleTensorRule, analyze

CONF = Path(__file__).resolve().parents[2] / "conf" / "bottleneck"


class TinyCamNet(nn.Module):
    """uint8 [1,3,32,32] (3072 elements = 3072 bytes) -> floats -> three stride-2 convs -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 8x16x16 = 2048 elements, 8192 bytes
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 8x8x8 = 512, 2048 bytes
        self.conv3 = nn.Conv2d(8, 4, 3, stride=2, padding=1)  # 4x4x4 = 64, 256 bytes
        self.pool = nn.AdaptiveAvgPool2d(1)  # 4, 16 bytes
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        x = self.conv3(self.conv2(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def camnet():
    torch.manual_seed(0)
    return TinyCamNet().eval(), torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)


def names(cuts):
    return [c.name for c in cuts]


def test_paper_rule_counts_elements(camnet, assert_exact):
    model, x = camnet
    plan = analyze(model, x, rule=PaperRule())
    assert plan.cuts[0].bytes == plan.input_raw_bytes == 3072  # full offloading sends uint8
    assert names(plan.natural_bottlenecks) == ["conv1", "conv2", "conv3", "pool"]
    assert_exact(model, plan, x, plan.candidates)


def test_bytes_rule_counts_bytes_against_the_uint8_input(camnet, assert_exact):
    model, x = camnet
    plan = analyze(model, x, rule=BytesRule())
    # conv1 has fewer elements than the input but 8192 float32 bytes > 3072 uint8 bytes
    assert names(plan.natural_bottlenecks) == ["conv2", "conv3", "pool"]
    assert [c.bytes for c in plan.natural_bottlenecks] == [2048, 256, 16]
    assert names(plan.candidates) == ["input", "conv2", "conv3", "pool", "output"]
    assert_exact(model, plan, x, plan.candidates)


def test_all_and_single_tensor_rules(camnet):
    model, x = camnet
    every = analyze(model, x, rule=AllCutsRule())
    assert every.natural_bottlenecks == every.cuts[1:-1] and every.candidates == every.cuts
    single = analyze(model, x, rule=SingleTensorRule())
    assert single.natural_bottlenecks == single.cuts[1:-1]  # a chain: one tensor crosses every cut


class Widen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, x], 1)
        return torch.cat([y, x], 1)


def test_input_and_output_are_candidates_even_without_bottlenecks():
    plan = analyze(Widen(), torch.randn(1, 2, 4, 4))
    assert plan.natural_bottlenecks == []
    assert names(plan.candidates) == ["input", "output"]
    single = analyze(Widen(), torch.randn(1, 2, 4, 4), rule=SingleTensorRule())
    assert single.natural_bottlenecks == []  # after the first cat both y and x cross


@pytest.mark.parametrize("option, rule_type", [("paper", PaperRule), ("bytes", BytesRule),
                                               ("all_single_tensor", SingleTensorRule), ("all", AllCutsRule)])
def test_config_group_instantiates_each_rule(option, rule_type, camnet):
    rule = instantiate(OmegaConf.load(CONF / f"{option}.yaml"))
    assert type(rule) is rule_type
    model, x = camnet
    assert analyze(model, x, rule=rule).natural_bottlenecks == analyze(model, x, rule=rule_type()).natural_bottlenecks
