"""Models torch.fx cannot trace: one clear ModelError, and leaf modules as the way out."""

import pytest
import torch
from torch import nn

from splitcomp.errors import ConfigError, ModelError
from splitcomp.split import AllCutsRule, analyze


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a tensor value: fx cannot trace this
            return x * 2
        return x - 1


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), Gate(), nn.ReLU())
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


class BranchyNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.max() > 1 else -x


@pytest.fixture
def gated():
    torch.manual_seed(0)
    return GatedNet().eval(), torch.randn(1, 3, 16, 16)


def test_untraceable_module_is_named_with_the_fix(gated):
    model, x = gated
    with pytest.raises(ModelError) as info:
        analyze(model, x)
    message = str(info.value)
    assert "'body.1'" in message and "Gate" in message
    assert "if x.sum() > 0" in message  # the line where tracing broke
    assert "leaf_modules=['Gate']" in message
    assert "\n" not in message


def test_untraceable_root_forward_is_named():
    with pytest.raises(ModelError, match="forward of BranchyNet itself"):
        analyze(BranchyNet(), torch.randn(2, 2))


@pytest.mark.parametrize("leaf", ["Gate", "body.1", f"{Gate.__module__}.Gate"])
def test_leaf_module_is_kept_whole(gated, leaf, assert_exact):
    model, x = gated
    plan = analyze(model, x, rule=AllCutsRule(), leaf_modules=[leaf])
    ops = [(n.op, n.target) for n in plan.graph_module.graph.nodes]
    assert ("call_module", "body.1") in ops
    assert not any(n.target in ("sum", torch.sum) for n in plan.graph_module.graph.nodes)
    assert [c.name for c in plan.cuts] == ["input", "body_0", "body_1", "body_2", "flatten", "output"]
    assert_exact(model, plan, x, plan.cuts)


def test_unknown_leaf_name_is_a_config_error(gated):
    model, x = gated
    with pytest.raises(ConfigError, match="Gaet"):
        analyze(model, x, leaf_modules=["Gaet"])


def test_example_input_the_model_cannot_take(gated):
    model, _ = gated
    with pytest.raises(ModelError, match="node 'body_0'"):
        analyze(model, torch.zeros(1, 3, 16, 16, dtype=torch.uint8), leaf_modules=["Gate"])
