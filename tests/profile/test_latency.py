import math

import numpy as np
import pytest

from splitcomp.errors import ConfigError
from splitcomp.link.frame_bytes import FrameBytes, wire_frame_bytes
from splitcomp.profile.latency import (
    CutProfile,
    LatencyModel,
    Profiles,
    ServerLoad,
)
from splitcomp.scenario.trace import Trace

FRAMES = wire_frame_bytes()
REQUEST_HEADER, ANSWER_HEADER = FRAMES.request, FRAMES.answer


def hand_profiles() -> Profiles:
    full = CutProfile(0, "input", bytes_up=1000, bytes_down=40, head_s={1: 0.0}, tail_s={1: 0.010, 4: 0.016},
                      encode_s=0.001, decode_s=0.002, is_full_offload=True)
    mid = CutProfile(3, "mid", bytes_up=200, bytes_down=40, head_s={1: 0.005}, tail_s={1: 0.004, 2: 0.006, 4: 0.010},
                     encode_s=0.0005, decode_s=0.0007, head_spread_s={1: 0.001}, tail_spread_s={1: 0.0, 2: 0.1, 4: 0.2})
    local = CutProfile(9, "output", bytes_up=0, bytes_down=0, head_s={1: 0.030}, tail_s={1: 0.0, 4: 0.0},
                       is_device_only=True)
    return Profiles(key={"model": "hand"}, cuts=[full, mid, local])


def test_frames_follow_the_wire_format():
    """A header of a few hundred bytes; the answer's carries the server's report."""
    assert 60 < REQUEST_HEADER < 400 and 200 < ANSWER_HEADER < 600 and 150 < FRAMES.probe_ack < 600
    with_mac = wire_frame_bytes(secret=True)
    assert with_mac.request == REQUEST_HEADER + 64 and with_mac.answer == ANSWER_HEADER + 64  # header and frame MACs


def test_each_term_of_an_offloading_cut():
    profiles = hand_profiles()
    model = LatencyModel(profiles, rtt_s=0.020, overhead_s=0.003)
    mid = profiles.by_name("mid")
    p = model.predict(mid, rate_up_bps=1e6, rate_down_bps=2e6)
    assert p.device_s == pytest.approx(0.005)
    assert p.encode_s == pytest.approx(0.0005)
    assert p.uplink_s == pytest.approx((200 + REQUEST_HEADER) * 8 / 1e6)
    assert p.rtt_s == pytest.approx(0.020)
    assert p.queue_s == 0.0
    assert p.server_s == pytest.approx(0.004)
    assert p.decode_s == pytest.approx(0.0007)
    assert p.downlink_s == pytest.approx((40 + ANSWER_HEADER) * 8 / 2e6)
    terms = sum(v for k, v in p.as_dict().items() if k != "total_s")
    assert p.total_s == pytest.approx(terms + 0.003)


def test_downlink_defaults_to_the_uplink_rate_and_rtt_to_twice_the_one_way_delay():
    profiles = hand_profiles()
    model = LatencyModel(profiles, one_way_delay_s=0.015)
    p = model.predict(profiles.by_name("mid"), rate_up_bps=1e6)
    assert p.downlink_s == pytest.approx((40 + ANSWER_HEADER) * 8 / 1e6)
    assert p.rtt_s == pytest.approx(0.030)
    assert model.predict(profiles.by_name("mid"), 1e6, rtt_s=0.1).rtt_s == pytest.approx(0.1)


def test_device_only_cut_has_no_link_and_no_server():
    profiles = hand_profiles()
    model = LatencyModel(profiles, rtt_s=0.05)
    for rate in (0.0, None, 1e3, 1e9):
        p = model.predict(profiles.by_name("output"), rate_up_bps=rate, load=ServerLoad(batch_size=8, queue_len=5))
        assert p.total_s == pytest.approx(0.030)
        assert p.uplink_s == p.downlink_s == p.rtt_s == p.server_s == p.queue_s == 0.0


@pytest.mark.parametrize("rate", [0.0, None, -5.0, float("nan")])
def test_missing_or_zero_rate_gives_infinite_uplink_not_an_error(rate):
    profiles = hand_profiles()
    p = LatencyModel(profiles).predict(profiles.by_name("input"), rate_up_bps=rate, rate_down_bps=1e6)
    assert p.uplink_s == math.inf and p.total_s == math.inf
    assert not any(math.isnan(v) for v in p.as_dict().values())


def test_server_load_batch_size_and_slowdown_increase_the_server_part():
    profiles = hand_profiles()
    model = LatencyModel(profiles)
    mid = profiles.by_name("mid")
    base = model.predict(mid, 1e6)
    batched = model.predict(mid, 1e6, load=ServerLoad(batch_size=4))
    slowed = model.predict(mid, 1e6, load=ServerLoad(batch_size=4, slowdown=2.0))
    assert batched.server_s == pytest.approx(0.010) and batched.server_s > base.server_s
    assert slowed.server_s == pytest.approx(0.020)
    assert base.total_s < batched.total_s < slowed.total_s
    assert slowed.device_s == base.device_s and slowed.uplink_s == base.uplink_s


def test_queue_delay_known_or_estimated_from_queue_length():
    profiles = hand_profiles()
    model = LatencyModel(profiles)
    mid = profiles.by_name("mid")
    assert model.predict(mid, 1e6, load=ServerLoad(queue_s=0.05)).queue_s == pytest.approx(0.05)
    # 3 requests ahead in batches of 2 -> two batches of 6 ms ahead
    assert model.predict(mid, 1e6, load=ServerLoad(batch_size=2, queue_len=3)).queue_s == pytest.approx(0.012)


def test_tail_at_interpolates_and_extrapolates_linearly():
    mid = hand_profiles().by_name("mid")
    assert mid.tail_at(1) == pytest.approx(0.004)
    assert mid.tail_at(3) == pytest.approx(0.008)  # halfway between 2 (6 ms) and 4 (10 ms)
    assert mid.tail_at(8) == pytest.approx(0.018)  # 2 ms per request beyond 4
    full = hand_profiles().by_name("input")
    assert full.tail_at(2) == pytest.approx(0.012)
    single = CutProfile(1, "x", 10, 10, {1: 0.0}, {1: 0.007})
    assert single.tail_at(16) == pytest.approx(0.007)
    assert hand_profiles().by_name("output").tail_at(8) == 0.0


def test_profiles_json_round_trip(tmp_path):
    profiles = hand_profiles()
    again = Profiles.from_json(profiles.to_json())
    assert again == profiles
    assert again.by_name("mid").tail_s == {1: 0.004, 2: 0.006, 4: 0.010}  # int keys come back
    path = profiles.save(tmp_path / "p.json")
    assert Profiles.load(path) == profiles
    assert Profiles.load(path).names == ["input", "mid", "output"]


def test_bad_profiles_file_and_unknown_cut_are_config_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="profiles"):
        Profiles.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="missing"):
        Profiles.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="mid"):
        hand_profiles().by_name("nope")


def outage_trace() -> Trace:
    # 1 Mbit/s, then a 2-second outage, then 1 Mbit/s again
    return Trace(times=np.array([0.0, 1.0, 3.0]), rates_bps=np.array([1e6, 0.0, 1e6]), duration=10.0, name="outage")


def test_predict_on_trace_matches_predict_on_a_constant_trace():
    profiles = hand_profiles()
    model = LatencyModel(profiles, rtt_s=0.02)
    flat = Trace(times=np.array([0.0]), rates_bps=np.array([1e6]), duration=10.0)
    for cut in profiles.cuts:
        on_trace = model.predict_on_trace(cut, flat, t0=2.0, downlink=None, load=ServerLoad(batch_size=2))
        assert on_trace.total_s == pytest.approx(model.predict(cut, 1e6, load=ServerLoad(batch_size=2)).total_s)


def test_predict_on_trace_across_an_outage_is_finite_and_larger():
    profiles = hand_profiles()
    model = LatencyModel(profiles, rtt_s=0.02)
    full = profiles.by_name("input")
    before = model.predict_on_trace(full, outage_trace(), t0=0.0, downlink=None, load=ServerLoad())
    during = model.predict_on_trace(full, outage_trace(), t0=1.5, downlink=None, load=ServerLoad())
    assert math.isfinite(during.total_s)
    # the frame enters the channel one one-way delay (half the RTT) after it is sent; the outage
    # lasts until t = 3 s
    enters = 1.5 + full.head_at(1) + full.encode_s + 0.01
    assert during.uplink_s == pytest.approx(3.0 - enters + (1000 + REQUEST_HEADER) * 8 / 1e6)
    assert during.total_s > before.total_s + 1.0


def test_predict_on_trace_uses_trace_rtt_and_a_dead_trace_gives_inf():
    profiles = hand_profiles()
    model = LatencyModel(profiles, rtt_s=0.5)
    rtt_trace = Trace(times=np.array([0.0]), rates_bps=np.array([1e6]), duration=5.0, rtts_s=np.array([0.04]))
    assert model.predict_on_trace(profiles.by_name("mid"), rtt_trace, 0.0).rtt_s == pytest.approx(0.04)
    dead = Trace(times=np.array([0.0]), rates_bps=np.array([0.0]), duration=5.0)
    p = model.predict_on_trace(profiles.by_name("mid"), dead, 0.0)
    assert p.total_s == math.inf and not any(math.isnan(v) for v in p.as_dict().values())
    assert model.predict_on_trace(profiles.by_name("output"), dead, 0.0).total_s == pytest.approx(0.030)


def test_predict_all_covers_every_cut_in_order():
    profiles = hand_profiles()
    totals = [p.total_s for p in LatencyModel(profiles).predict_all(1e3)]
    assert len(totals) == 3
    assert totals[2] == pytest.approx(0.030)  # device-only wins on a very slow link
    assert min(totals) == totals[2]


FRAME_OVERHEAD_BYTES = 200  # a frame's bytes around its payload, in both directions


def batched_profiles() -> Profiles:
    """Heads profiled at two batch sizes, as the paper's batch semantics need."""
    full = CutProfile(0, "input", bytes_up=1000, bytes_down=40, head_s={1: 0.0, 4: 0.0}, tail_s={1: 0.010, 4: 0.022},
                      encode_s=0.001, decode_s=0.002, is_full_offload=True)
    mid = CutProfile(3, "mid", bytes_up=200, bytes_down=40, head_s={1: 0.005, 4: 0.014}, tail_s={1: 0.004, 4: 0.010},
                     encode_s=0.0005, decode_s=0.0007)
    local = CutProfile(9, "output", bytes_up=0, bytes_down=0, head_s={1: 0.030, 4: 0.090}, tail_s={1: 0.0, 4: 0.0},
                       is_device_only=True)
    return Profiles(key={"model": "batched"}, cuts=[full, mid, local])


def test_a_batch_of_images_scales_device_link_and_server():
    profiles = batched_profiles()
    model = LatencyModel(profiles, frames=FrameBytes(request=FRAME_OVERHEAD_BYTES, answer=FRAME_OVERHEAD_BYTES,
                                                     probe=0, probe_ack=0))
    mid = profiles.by_name("mid")
    p = model.predict(mid, rate_up_bps=1e6, batch=4)
    assert p.device_s == pytest.approx(0.014)  # the head profiled at batch 4
    assert p.encode_s == pytest.approx(4 * 0.0005)
    assert p.uplink_s == pytest.approx((4 * 200 + FRAME_OVERHEAD_BYTES) * 8 / 1e6)  # four payloads, one frame
    assert p.server_s == pytest.approx(0.010)  # the tail profiled at batch 4
    assert p.decode_s == pytest.approx(4 * 0.0007)
    assert p.downlink_s == pytest.approx((4 * 40 + FRAME_OVERHEAD_BYTES) * 8 / 1e6)
    assert p.total_s == pytest.approx(0.014 + 0.002 + 0.0080 + 0.010 + 0.0028 + 0.00288)
    # between profiled sizes both sides interpolate: batch 2 is a third of the way from 1 to 4
    two = model.predict(mid, rate_up_bps=1e6, batch=2)
    assert two.device_s == pytest.approx(0.008) and two.server_s == pytest.approx(0.006)
    assert model.predict(profiles.by_name("output"), rate_up_bps=None, batch=4).total_s == pytest.approx(0.090)
    full = model.predict(profiles.by_name("input"), rate_up_bps=8e6, batch=4)
    assert full.device_s == 0.0 and full.uplink_s == pytest.approx((4000 + FRAME_OVERHEAD_BYTES) / 1e6)


def test_batch_one_is_the_single_image_prediction_and_server_load_adds_to_the_batch():
    profiles = batched_profiles()
    model = LatencyModel(profiles, rtt_s=0.01)
    mid = profiles.by_name("mid")
    assert model.predict(mid, 2e6, batch=1) == model.predict(mid, 2e6)
    # two own images computed with two other requests' images: a server batch of 4
    p = model.predict(mid, 2e6, load=ServerLoad(batch_size=3), batch=2)
    assert p.server_s == pytest.approx(0.010)
    assert [q.total_s for q in model.predict_all(2e6, batch=4)] == [
        model.predict(c, 2e6, batch=4).total_s for c in profiles.cuts]


def test_a_batch_needs_heads_profiled_at_several_batch_sizes():
    profiles = hand_profiles()  # heads timed at batch 1 only
    model = LatencyModel(profiles)
    with pytest.raises(ConfigError, match="several batch sizes"):
        model.predict(profiles.by_name("mid"), 1e6, batch=2)
    with pytest.raises(ConfigError, match="positive whole number"):
        model.predict(profiles.by_name("mid"), 1e6, batch=0)
