"""Segment profiles: stretches between candidate cuts, on a fake clock that only the model advances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.link.codecs import Float16Codec, RawCodec
from splitcomp.link.frame_bytes import FrameBytes
from splitcomp.profile.latency import LatencyModel
from splitcomp.profile.segments import (
    SegmentProfile,
    SplitAgreement,
    crossing_values,
    cut_profiles,
    scale_heads,
    split_agreement,
    time_segments,
)
from splitcomp.split import BlockOutputsRule, analyze


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Work(nn.Module):
    """Costs ``seconds`` of fake time per image (a repeating pattern of costs per call, to make
    noise), then halves the channels by averaging pairs."""

    def __init__(self, clock: FakeClock, seconds: list[float]) -> None:
        super().__init__()
        self.clock, self.seconds, self.calls = clock, seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.seconds[self.calls % len(self.seconds)] * x.shape[0]
        self.calls += 1
        return x.view(x.shape[0], -1, 2, *x.shape[2:]).mean(2)


def chain(clock: FakeClock, costs: list[list[float]]) -> nn.Module:
    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*[nn.Sequential(Work(clock, c)) for c in costs])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x.float()).flatten(1)

    return Chain().eval()


def plan_of(model: nn.Module):
    # [1, 16, 4, 4] uint8 in (256 elements); each block halves it: 128, 64, 32
    plan = analyze(model, torch.zeros(1, 16, 4, 4, dtype=torch.uint8), rule=BlockOutputsRule(), leaf_modules=["Work"])
    return plan, torch.zeros(1, 16, 4, 4, dtype=torch.uint8)


def test_stretches_between_cuts_scale_with_the_batch():
    clock = FakeClock()
    plan, example = plan_of(chain(clock, [[1.0], [2.0], [4.0]]))
    assert [c.elements for c in plan.candidates] == [256, 128, 64, 32, 32]  # input, 3 blocks, output
    segments = time_segments(plan, example, plan.candidates, [1, 4], repeats=2, clock=clock, progress=False)
    assert segments.samples[1] == [[1.0, 2.0, 4.0, 0.0]] * 2  # the flatten after the last block costs nothing
    assert segments.samples[4] == [[4.0, 8.0, 16.0, 0.0]] * 2
    assert segments.head(2, 4) == (12.0, 0.0) and segments.tail(2, 4) == (16.0, 0.0)
    assert segments.total(1) == (7.0, 0.0)


def test_more_repeats_only_while_some_head_or_tail_is_noisy():
    clock = FakeClock()
    steady, example = plan_of(chain(clock, [[1.0], [1.0], [1.0]]))
    assert time_segments(steady, example, steady.candidates, [1], warmup=0, repeats=3, max_repeats=8,
                         clock=clock, progress=False).repeats(1) == 3
    noisy, example = plan_of(chain(clock, [[1.0], [1.0, 3.0], [1.0]]))  # the middle block alternates
    segments = time_segments(noisy, example, noisy.candidates, [1], warmup=0, repeats=3, max_repeats=8,
                             clock=clock, progress=False)
    assert segments.repeats(1) == 8 and segments.widest_rel_iqr(1) > 0.05
    with pytest.raises(ConfigError, match="max_repeats"):
        time_segments(noisy, example, noisy.candidates, [1], repeats=3, max_repeats=2, clock=clock)


def test_cut_profiles_share_the_computation_and_differ_only_in_codec_bytes():
    clock = FakeClock()
    plan, example = plan_of(chain(clock, [[1.0], [2.0], [4.0]]))
    cuts = plan.candidates
    segments = time_segments(plan, example, cuts, [1, 4], repeats=1, max_repeats=1, clock=clock, progress=False)
    crossings = crossing_values(plan, example, cuts)
    assert [tuple(v.shape) for (v,) in crossings] == [(1, 16, 4, 4), (1, 8, 4, 4), (1, 4, 4, 4), (1, 2, 4, 4), (1, 32)]
    raw = cut_profiles(segments, cuts, crossings, RawCodec(), slowdown=10.0)
    half = cut_profiles(segments, cuts, crossings, Float16Codec(), slowdown=10.0)
    for profiles in (raw, half):
        full, first, *_, local = profiles.cuts
        assert full.is_full_offload and full.head_s == {1: 0.0, 4: 0.0} and full.tail_s == {1: 7.0, 4: 28.0}
        assert first.head_s == {1: 10.0, 4: 40.0} and first.tail_s == {1: 6.0, 4: 24.0}
        assert local.is_device_only and local.head_s == {1: 70.0, 4: 280.0} and local.tail_s == {1: 0.0, 4: 0.0}
        assert first.bytes_down == 32 * 4  # float32 logits
    assert raw.cuts[0].bytes_up == half.cuts[0].bytes_up == 256  # the uint8 input crosses as it is
    assert [c.bytes_up for c in raw.cuts[1:4]] == [512, 256, 128]
    assert [c.bytes_up for c in half.cuts[1:4]] == [256, 128, 64]
    # the paper's batch semantics straight from the segment profile: 4 images, 1 MB/s
    p = LatencyModel(raw, frames=FrameBytes(request=0, answer=0, probe=0, probe_ack=0)).predict(raw.cuts[2], 8e6, batch=4)
    assert p.device_s == pytest.approx(120.0) and p.server_s == pytest.approx(16.0)
    assert p.uplink_s == pytest.approx(4 * 256 / 1e6)


def test_segment_profile_json_round_trip_and_bad_files(tmp_path):
    profile = SegmentProfile(cuts=["input", "a", "output"], samples={1: [[0.1, 0.2]], 4: [[0.3, 0.5], [0.4, 0.6]]},
                             hardware="cpu:test", key={"model": "x"})
    again = SegmentProfile.load(profile.save(tmp_path / "s.json"))
    assert again == profile and again.batch_sizes == [1, 4]
    (tmp_path / "bad.json").write_text('{"format": "splitcomp-segments/1", "cuts": ["a", "b"], "samples": {"1": [[1, 2]]}}')
    with pytest.raises(ConfigError, match="do not match its cuts"):
        SegmentProfile.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        SegmentProfile.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="measure it again"):
        cut_profiles(profile, [], [], RawCodec())


def test_real_passes_give_positive_stretches_that_add_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    example = torch.randn(1, 3, 32, 32)
    plan = analyze(model, example)
    segments = time_segments(plan, example, plan.candidates, [1, 2], repeats=3, progress=False)
    for batch in (1, 2):
        assert all(len(run) == len(plan.candidates) - 1 and min(run) > 0 for run in segments.samples[batch])
        for k in range(len(plan.candidates)):
            assert segments.head(k, batch)[0] <= segments.total(batch)[0] + 1e-12


def test_split_agreement_compares_segments_with_the_real_head_and_tail():
    clock = FakeClock()
    plan, example = plan_of(chain(clock, [[1.0], [2.0], [4.0]]))
    agreement = split_agreement(plan, plan.candidates, plan.candidates[2], example, rounds=3, clock=clock)
    assert (agreement.head_s, agreement.tail_s) == (3.0, 4.0)
    assert (agreement.segment_head_s, agreement.segment_tail_s) == (3.0, 4.0)
    assert agreement.error_pct == 0.0
    off = SplitAgreement("x", head_s=3.0, tail_s=1.0, segment_head_s=3.5, segment_tail_s=0.9)
    assert off.error_pct == pytest.approx(12.5)  # 0.5 s of a 4 s model


def test_scale_heads_models_a_slower_device_on_the_same_profile():
    clock = FakeClock()
    plan, example = plan_of(chain(clock, [[1.0], [2.0], [4.0]]))
    segments = time_segments(plan, example, plan.candidates, [1], repeats=1, max_repeats=1, clock=clock, progress=False)
    same = cut_profiles(segments, plan.candidates, crossing_values(plan, example, plan.candidates), RawCodec())
    slower = scale_heads(same, 5.0)
    assert [c.head_s[1] for c in slower.cuts] == [5 * c.head_s[1] for c in same.cuts] == [0.0, 5.0, 15.0, 35.0, 35.0]
    assert [c.tail_s for c in slower.cuts] == [c.tail_s for c in same.cuts]
    assert slower.key["slowdown"] == 5.0 and scale_heads(slower, 2.0).key["slowdown"] == 10.0
    with pytest.raises(ConfigError, match="slowdown"):
        scale_heads(same, 0.5)
