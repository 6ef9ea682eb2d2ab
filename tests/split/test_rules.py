"""Natural-bottleneck rules, on a uint8-input model, and their config group."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.split import AllCutsRule, BlockOutputsRule, BytesRule, PaperRule, SingleTensorRule, analyze
from splitcomp.split.bottlenecks import default_blocks
from splitcomp.workload.models import torchvision_model

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
                                               ("all_single_tensor", SingleTensorRule), ("all", AllCutsRule),
                                               ("blocks", BlockOutputsRule)])
def test_config_group_instantiates_each_rule(option, rule_type, camnet):
    rule = instantiate(OmegaConf.load(CONF / f"{option}.yaml"))
    assert type(rule) is rule_type
    model, x = camnet
    assert analyze(model, x, rule=rule).natural_bottlenecks == analyze(model, x, rule=rule_type()).natural_bottlenecks


class Residual(nn.Module):
    """A block that is not a container: its inner Sequential is part of it, not a block of its own."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class NestedNet(nn.Module):
    """uint8 [1,3,32,32] (3072 elements). stem: plain layers closed by a MaxPool (8x8x8 = 512);
    stages: two Sequential stages of Residual blocks; the second starts with a stride-2 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.stages = nn.Sequential(
            nn.Sequential(Residual(8), Residual(8)),  # 8x8x8 = 512 elements
            nn.Sequential(nn.Conv2d(8, 32, 3, stride=2, padding=1), Residual(32)),  # 32x4x4 = 512
        )
        self.widen = nn.Sequential(nn.Conv2d(32, 256, 1), nn.ReLU())  # 256x4x4 = 4096 > 3072
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.widen(self.stages(self.stem(x.float() / 255)))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def nested():
    torch.manual_seed(0)
    return NestedNet().eval(), torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)


def test_default_blocks_nest_in_containers_but_not_inside_other_blocks(nested):
    model, _ = nested
    assert default_blocks(model) == ["stem.2", "stages.0", "stages.0.0", "stages.0.1", "stages.1", "stages.1.1"]


def test_block_rule_keeps_block_outputs_below_the_input_only(nested, assert_exact):
    model, x = nested
    plan = analyze(model, x, rule=BlockOutputsRule())
    # the outermost module each natural bottleneck closes, and its compression in elements
    closed = [(c.ends_modules[0], c.elements / plan.cuts[0].elements) for c in plan.natural_bottlenecks]
    assert closed == [("stem", 512 / 3072), ("stages.0.0", 512 / 3072), ("stages.0", 512 / 3072),
                      ("stages", 512 / 3072)]
    assert plan.natural_bottlenecks[2].ends_modules == ("stages.0", "stages.0.1")  # a stage ends with its last block
    assert plan.natural_bottlenecks[3].ends_modules == ("stages", "stages.1", "stages.1.1")
    # every other cut below the input (the stem's conv, the stride-2 conv, the pooled features) is no block output
    below = {c.name for c in plan.cuts[1:-1] if c.elements < plan.cuts[0].elements}
    assert {"stem_0", "stages_1_0", "pool"} <= below - {c.name for c in plan.natural_bottlenecks}
    assert_exact(model, plan, x, plan.candidates)


def test_block_rule_options_patterns_falling_and_errors(nested):
    model, x = nested
    stages = analyze(model, x, rule=BlockOutputsRule(blocks=["stages.*"]))
    assert [c.ends_modules[-1] for c in stages.natural_bottlenecks] == ["stages.0.1", "stages.1.1"]  # the stage ends
    falling = analyze(model, x, rule=BlockOutputsRule(falling=True))
    assert [c.ends_modules[0] for c in falling.natural_bottlenecks] == ["stem"]  # later ones are no smaller
    strict = analyze(model, x, rule=BlockOutputsRule(max_compression=0.1))
    assert strict.natural_bottlenecks == []
    with pytest.raises(ConfigError, match="match no module"):
        analyze(model, x, rule=BlockOutputsRule(blocks=["nothing.*"]))
    with pytest.raises(ConfigError, match="positive ratio"):
        BlockOutputsRule(max_compression=0)


def test_vit_b_32_at_384_has_encoder_block_bottlenecks():
    torch.manual_seed(0)
    model = torchvision_model("vit_b_32", image_size=384).eval()
    x = torch.randint(0, 256, (1, 3, 384, 384), dtype=torch.uint8)
    plan = analyze(model, x, rule=BlockOutputsRule())
    layers = [f"backbone.encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert [c.ends_modules[-1] for c in plan.natural_bottlenecks] == layers
    # 12x12 patches + the class token, 768 wide, against 3x384x384 input elements: about a quarter
    first = plan.natural_bottlenecks[0]
    assert first.elements == 145 * 768 and first.elements / plan.cuts[0].elements == pytest.approx(0.2517, abs=1e-4)
    assert first.single_tensor
