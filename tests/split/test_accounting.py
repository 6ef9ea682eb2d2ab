"""Cut enumeration and accounting on a hand-written model whose every figure is known."""

import pytest
import torch
from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.split import Cut, CutNotFoundError, SplitPlan, analyze


class SkipNet(nn.Module):
    """x [2,3,8,8] -> conv -> relu = a (used 3 times) -> skip sums -> pool -> fc, times exp(scale).

    ``n = x.size(0)`` is a plain int used at the very end; ``exp(scale)`` depends only on a parameter;
    ``offset`` is used early (add) and late (sub)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)  # 12 + 4 params = 64 bytes
        self.offset = nn.Parameter(torch.full((4, 1, 1), 0.5))  # 16 bytes
        self.scale = nn.Parameter(torch.zeros(5))  # 20 bytes
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(64, 5)  # 320 + 5 params = 1300 bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        w = self.scale.exp()
        a = torch.relu(self.conv(x))
        b = a * 2
        c = a + self.offset
        s = b + c + a
        s = s - self.offset
        p = self.pool(s)
        return self.fc(p.view(n, -1)) * w


# name -> (crossing, tensor elements); a float32 element is 4 bytes
EXPECTED = [
    ("input", ("x",), 384),
    ("size", ("x", "size"), 384),
    ("conv", ("size", "conv"), 512),
    ("relu", ("size", "relu"), 512),
    ("mul", ("size", "relu", "mul"), 1024),
    ("add", ("size", "relu", "mul", "add"), 1536),  # a is counted once though three nodes use it
    ("add_1", ("size", "relu", "add_1"), 1024),
    ("add_2", ("size", "add_2"), 512),
    ("sub", ("size", "sub"), 512),
    ("pool", ("size", "pool"), 128),
    ("view", ("view",), 128),
    ("fc", ("fc",), 10),
    ("output", ("mul_1",), 10),
]
CONV_FLOPS = 2 * (2 * 4 * 8 * 8) * 3  # 2 per multiply-add, per output element: 3 input channels
FC_FLOPS = 2 * 2 * 64 * 5


@pytest.fixture(scope="module")
def skipnet():
    torch.manual_seed(0)
    model = SkipNet().eval()
    x = torch.randn(2, 3, 8, 8)
    return model, x, analyze(model, x)


def test_cuts_crossing_values_elements_and_bytes(skipnet):
    _, _, plan = skipnet
    got = [(c.name, c.crossing, c.elements) for c in plan.cuts]
    assert got == EXPECTED
    assert [c.bytes for c in plan.cuts] == [4 * e for _, _, e in EXPECTED]
    assert [c.index for c in plan.cuts] == list(range(len(EXPECTED)))
    # the plain int and the parameter-only exp(scale) never count as tensors
    assert [c.single_tensor for c in plan.cuts] == [len([v for v in cr if v != "size"]) == 1 for _, cr, _ in EXPECTED]
    assert all("exp" not in c.crossing and "scale" not in c.crossing for c in plan.cuts)


def test_flops_per_side(skipnet):
    _, _, plan = skipnet
    total = CONV_FLOPS + FC_FLOPS
    assert plan.total_flops == total
    by_name = {c.name: c for c in plan.cuts}
    assert (by_name["input"].head_flops, by_name["input"].tail_flops) == (0, total)
    assert (by_name["relu"].head_flops, by_name["relu"].tail_flops) == (CONV_FLOPS, FC_FLOPS)
    assert (by_name["output"].head_flops, by_name["output"].tail_flops) == (total, 0)
    assert all(c.head_flops + c.tail_flops == total for c in plan.cuts)


def test_param_bytes_count_on_each_side_that_uses_them(skipnet):
    _, _, plan = skipnet
    conv, offset, scale, fc = 64, 16, 20, 1300
    expected = {
        "input": (0, conv + offset + scale + fc),
        "relu": (conv, offset + scale + fc),
        "add_1": (conv + offset, offset + scale + fc),  # offset is used on both sides
        "sub": (conv + offset, scale + fc),
        "fc": (conv + offset + fc, scale),  # exp(scale) runs where it is used: at the end
        "output": (conv + offset + scale + fc, 0),
    }
    got = {c.name: (c.head_param_bytes, c.tail_param_bytes) for c in plan.cuts if c.name in expected}
    assert got == expected


def test_every_cut_is_exact_and_carries_the_plain_int(skipnet, assert_exact):
    model, x, plan = skipnet
    assert_exact(model, plan, x, plan.cuts)
    assert_exact(model, plan, x, plan.cuts, over_wire=True)
    head, _ = plan.split("pool")
    values = head(x)
    assert values[0] == 2 and isinstance(values[0], int)
    assert values[1].shape == (2, 4, 4, 4)


def test_plain_value_follows_the_batch(skipnet):
    model, _, plan = skipnet
    head, tail = plan.split("add_1")
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(tail(head(x)), model(x))


def test_plan_lookup_and_candidates(skipnet):
    _, _, plan = skipnet
    assert isinstance(plan, SplitPlan) and all(isinstance(c, Cut) for c in plan.cuts)
    assert plan.cuts[0].name == "input" and plan.cuts[-1].name == "output"
    assert plan.cut("pool") is plan.cuts[9] and plan.cut(9) is plan.cuts[9] and plan.cut(-1) is plan.cuts[-1]
    # paper rule: strictly falling below the input's 384 elements; the output cut is never a bottleneck
    assert [c.name for c in plan.natural_bottlenecks] == ["pool", "fc"]
    assert [c.name for c in plan.candidates] == ["input", "pool", "fc", "output"]
    with pytest.raises(CutNotFoundError, match="pool") as info:
        plan.cut("layer9")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(ConfigError):
        plan.cut(len(plan.cuts))


class HalfCodec(Codec):
    """Counts half the raw bytes: the plan must use the codec's own figure."""

    name = "half"

    def encode(self, tensor):
        raise NotImplementedError

    def decode(self, encoded):
        raise NotImplementedError

    def nbytes(self, tensor):
        return RawCodec().nbytes(tensor) // 2


def test_bytes_follow_the_codec():
    model = SkipNet().eval()
    plan = analyze(model, torch.randn(2, 3, 8, 8), codec=HalfCodec())
    assert [c.bytes for c in plan.cuts] == [2 * e for _, _, e in EXPECTED]
    assert plan.input_raw_bytes == 384 * 4


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_attention_flops_include_projections_and_both_products():
    # batch 2, 5 tokens, width 16: q/k/v/out projections 4 * 5*16*16, scores and weighted sum 2 * 5*5*16
    macs = 2 * (4 * 5 * 16 * 16 + 2 * 5 * 5 * 16)
    assert analyze(Attention().eval(), torch.randn(2, 5, 16)).total_flops == 2 * macs


def test_segments_between_consecutive_cuts_chain_into_the_model():
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    plan = analyze(model, x[:1])
    cuts = plan.candidates
    with torch.no_grad():
        values = (x,)
        for start, end in zip(cuts, cuts[1:]):
            values = plan.segment(start, end)(values)
            assert len(values) == len(end.crossing)
        assert torch.equal(values[0], model(x))
        head, _ = plan.split(cuts[2])
        middle = plan.segment(cuts[1], cuts[2])(plan.split(cuts[1])[0](x))
        assert all(torch.equal(a, b) for a, b in zip(middle, head(x)))
    with pytest.raises(CutNotFoundError, match="must come before"):
        plan.segment(cuts[2], cuts[1])
