"""tail(head(x)) == model(x) bit for bit on torchvision architectures of many families.

Random weights, eval mode, small inputs; transformers in small configurations of the same classes."""

import pytest
import torch
from torchvision.models import get_model
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.vision_transformer import VisionTransformer

from splitcomp.split import AllCutsRule, SingleTensorRule, analyze

# name -> (builder, input side)
ARCHITECTURES = {
    "resnet18": (lambda: get_model("resnet18"), 64),
    "mobilenet_v2": (lambda: get_model("mobilenet_v2"), 64),
    "mobilenet_v3_small": (lambda: get_model("mobilenet_v3_small"), 64),
    "shufflenet_v2_x0_5": (lambda: get_model("shufflenet_v2_x0_5"), 64),
    "efficientnet_b0": (lambda: get_model("efficientnet_b0"), 64),
    "regnet_y_400mf": (lambda: get_model("regnet_y_400mf"), 64),
    "densenet121": (lambda: get_model("densenet121"), 64),
    "squeezenet1_1": (lambda: get_model("squeezenet1_1"), 64),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)]), 64),
    "vit": (lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                      mlp_dim=64), 32),
    "swin_v2": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                        window_size=[4, 4], block=SwinTransformerBlockV2,
                                        downsample_layer=PatchMergingV2), 64),
    "maxvit": (lambda: MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                              block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0), 64),
}


def build(name):
    builder, side = ARCHITECTURES[name]
    torch.manual_seed(0)
    return builder().eval(), torch.randn(1, 3, side, side)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_exact_at_every_natural_bottleneck(name, assert_exact):
    model, x = build(name)
    plan = analyze(model, x)
    assert plan.natural_bottlenecks, "every architecture here shrinks below its input somewhere"
    sizes = [c.elements for c in [plan.cuts[0], *plan.natural_bottlenecks]]
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    assert plan.candidates == [plan.cuts[0], *plan.natural_bottlenecks, plan.cuts[-1]]
    assert_exact(model, plan, x, plan.candidates)
    assert_exact(model, plan, x, plan.candidates, over_wire=True)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_exact_at_every_single_tensor_cut(name, assert_exact):
    model, x = build(name)
    plan = analyze(model, x, rule=SingleTensorRule())
    single = [c for c in plan.cuts if c.single_tensor]
    assert plan.natural_bottlenecks == single[1:-1] and len(single) > 20
    assert_exact(model, plan, x, single)


def test_exact_where_several_tensors_cross(assert_exact):
    model, x = build("resnet18")
    plan = analyze(model, x, rule=AllCutsRule())
    several = [c for c in plan.cuts if len(c.crossing) > 1]
    assert len(several) > 20  # inside every residual block the block input crosses beside the main path
    inside_block = plan.cut("layer1_0_conv1")
    assert inside_block.crossing == ("maxpool", "layer1_0_conv1")
    assert inside_block.elements == 2 * 64 * 16 * 16
    assert_exact(model, plan, x, several, over_wire=True)


def test_cut_figures_are_consistent_on_a_real_model():
    model, x = build("mobilenet_v2")
    plan = analyze(model, x)
    total = plan.total_flops
    weights = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert plan.cuts[0].tail_param_bytes == weights == plan.cuts[-1].head_param_bytes
    assert all(c.head_flops + c.tail_flops == total for c in plan.cuts)
    heads = [c.head_flops for c in plan.cuts]
    assert heads == sorted(heads) and heads[0] == 0
    assert all(c.bytes == 4 * c.elements for c in plan.cuts)  # float32 everywhere under the raw codec
