import pytest

from splitcomp.errors import ConfigError
from splitcomp.profile.check import CheckLimits, Problem, check_profiles, refusal, suspects, worst
from splitcomp.profile.latency import CutProfile, Profiles

MS = 1e-3
SLOWDOWN = 10.0  # the issue's workload: heads are dilated ten times


def cut(index, name, head_ms, tail_ms, spread=0.02, **flags):
    """A cut with a head at batch 1 and tails at batches 1 and 4 (IQRs ``spread`` of the medians)."""
    tails = {1: tail_ms * MS, 4: 3 * tail_ms * MS}
    return CutProfile(index, name, bytes_up=1000, bytes_down=40, head_s={1: head_ms * MS}, tail_s=tails,
                      head_spread_s={1: spread * head_ms * MS}, tail_spread_s={b: spread * t for b, t in tails.items()},
                      **flags)


def sound_profiles() -> Profiles:
    """Times a quiet machine gives: a whole model of 29 ms here (290 ms on the device at slowdown 10)
    and 30 ms on the server; head and tail shares add up to about 1 at every cut."""
    return Profiles(key={"server": {"kind": "cpu:test"}}, cuts=[
        cut(0, "input", 0.05, 30.0, is_full_offload=True),
        cut(5, "conv2d_5", 40.0, 26.5),
        cut(35, "conv2d_35", 210.0, 9.0),
        cut(40, "output", 290.0, 0.0, is_device_only=True),
    ])


def poisoned_profiles() -> Profiles:
    """The issue's profile, measured at a busy moment: the whole model takes 75 ms on the server,
    the tail after conv2d_5 102 ms, and the head up to conv2d_35 1131 ms (device-only: 290 ms)."""
    return Profiles(key={"server": {"kind": "cpu:test"}}, cuts=[
        cut(0, "input", 0.05, 75.0, is_full_offload=True),
        cut(5, "conv2d_5", 40.0, 102.0),
        cut(35, "conv2d_35", 1131.0, 20.0),
        cut(40, "output", 290.0, 0.0, is_device_only=True),
    ])


def by_check(problems):
    return {(p.check, p.cuts) for p in problems}


def test_a_sound_profile_passes():
    assert check_profiles(sound_profiles(), CheckLimits(), SLOWDOWN) == []


def test_the_issues_poisoned_profile_fails_every_way_it_is_wrong():
    problems = by_check(check_profiles(poisoned_profiles(), CheckLimits(), SLOWDOWN))
    assert ("tail_order", ("input", "conv2d_5")) in problems  # 102 ms after conv2d_5 > 75 ms for the whole model
    assert ("head_order", ("conv2d_35", "output")) in problems  # 1131 ms > device-only's 290 ms
    assert ("head_tail_sum", ("conv2d_35", "input", "output")) in problems  # 3.9 + 0.27 of the whole model
    assert {check for check, _ in problems} == {"tail_order", "head_order", "head_tail_sum"}


def test_ordering_allows_the_measured_spread_and_the_relative_slack():
    profiles = sound_profiles()
    deep = profiles.by_name("conv2d_35")
    deep.head_s[1] = 300.0 * MS  # 10 ms over device-only: inside 10 % + the spreads
    assert "head_order" not in {p.check for p in check_profiles(profiles, CheckLimits(), SLOWDOWN)}
    deep.head_s[1] = 360.0 * MS  # 70 ms over: outside
    assert ("head_order", ("conv2d_35", "output")) in by_check(check_profiles(profiles, CheckLimits(), SLOWDOWN))
    deep.head_spread_s[1] = 100.0 * MS  # the same gap, but a wide IQR: ordering tolerates it, the IQR is flagged
    checks = by_check(check_profiles(profiles, CheckLimits(max_spread=0.1), SLOWDOWN))
    assert ("head_order", ("conv2d_35", "output")) not in checks and ("spread", ("conv2d_35",)) in checks


def test_sub_millisecond_cuts_are_judged_against_the_floor():
    tiny = Profiles(key={}, cuts=[
        cut(0, "input", 0.005, 0.10, is_full_offload=True),
        cut(1, "mid", 0.09, 0.08),  # 0.9 + 0.8 of the whole model: call overhead, not a busy moment
        cut(2, "output", 0.10, 0.0, is_device_only=True),
    ])
    assert check_profiles(tiny, CheckLimits(), 1.0) == []
    assert "head_tail_sum" in {p.check for p in check_profiles(tiny, CheckLimits(floor_s=0.0), 1.0)}


def test_the_sum_check_undoes_nothing_it_need_not():
    # shares are ratios: a device ten times slower than the server leaves a sound profile sound
    profiles = sound_profiles()
    for c in profiles.cuts:
        c.head_s[1] *= 10
        c.head_spread_s[1] *= 10
    assert check_profiles(profiles, CheckLimits(), SLOWDOWN * 10) == []


def test_the_sum_check_is_skipped_for_a_gpu_server():
    profiles = sound_profiles()
    profiles.by_name("conv2d_35").tail_s[1] = 25.0 * MS  # a GPU runs even a short tail at launch cost
    assert "head_tail_sum" in {p.check for p in check_profiles(profiles, CheckLimits(), SLOWDOWN)}
    profiles.key = {"server": {"kind": "cuda:H100"}}
    assert check_profiles(profiles, CheckLimits(), SLOWDOWN) == []


def test_suspects_are_the_outliers_not_everything_they_fail_against():
    profiles = sound_profiles()
    profiles.by_name("conv2d_5").head_s[1] = 1000.0 * MS  # longer than every deeper head
    problems = check_profiles(profiles, CheckLimits(), SLOWDOWN)
    assert len(problems) >= 2
    assert suspects(problems) == {"conv2d_5"}
    pair = [Problem("tail_order", ("a", "b"), "", 2.0)]
    assert suspects(pair) == {"a", "b"}  # one failed comparison: either side may be wrong


def test_refusal_is_one_sentence_naming_the_cut_the_check_and_how_to_remeasure():
    problems = check_profiles(poisoned_profiles(), CheckLimits(), SLOWDOWN)
    text = refusal(problems, 2, "other processes kept 1.5 of 2 CPUs busy")
    assert "\n" not in text and text.count(". ") == 0
    assert "after 2 re-measurements" in text and "1.5 of 2 CPUs" in text
    assert "conv2d_35" in text and f"the {worst(problems).check} check" in text
    assert "profile.force=true" in text and "profile.check=false" in text


@pytest.mark.parametrize("key", ["max_spread", "order_tolerance", "sum_tolerance", "floor_ms", "jitter_ms"])
def test_limits_must_be_non_negative_numbers(key):
    assert CheckLimits.from_cfg({}) == CheckLimits()
    assert CheckLimits.from_cfg({"floor_ms": 2}).floor_s == pytest.approx(0.002)
    for bad in (-1, "x", None, float("inf")):
        with pytest.raises(ConfigError, match=f"profile.{key}"):
            CheckLimits.from_cfg({key: bad})
