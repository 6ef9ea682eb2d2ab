"""The latency model against the real runtime: a small run over a real shaped socket."""

import math
import statistics

import pytest
from omegaconf import OmegaConf

from splitcomp.build import socket_bench

RATE_BPS = 20e6
MEASURED = ("device_s", "encode_s", "uplink_s", "queue_s", "server_s", "decode_s", "downlink_s", "latency_s")
PREDICTED = ("predicted_device_s", "predicted_uplink_s", "predicted_rtt_s", "predicted_server_s",
             "predicted_downlink_s", "predicted_latency_s")


def static(cut: str):
    return OmegaConf.create({"_target_": "splitcomp.policy.simple.Static", "cut": cut})


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Five photos at two offloading cuts (full offloading and the middle candidate), 20 Mbit/s."""
    tmp = tmp_path_factory.mktemp("prediction")
    overrides = ["model=torchvision", "model.name=mobilenet_v3_small", "dataset=samples", "dataset.image_size=64",
                 "link=shaped", "channel=constant", f"channel.rate_bps={RATE_BPS}", "estimator=oracle",
                 "server_load=none", f"profile.cache_dir={tmp / 'profiles'}", "profile.batch_sizes=[1]",
                 "profile.repeats=3",
                 # the prediction is tested here, not the profile checks (tests/profile): a busy
                 # machine may fail them, and the records would never be taken
                 "profile.check=false"]
    with socket_bench(overrides, tmp / "run") as bench:
        cuts = bench.scenario.profiles.cuts
        middle = cuts[len(cuts) // 2]
        assert not middle.is_device_only and not middle.is_full_offload
        return {"input": bench.run(static("input")), "middle": bench.run(static(middle.name))}


def all_records(records):
    return records["input"] + records["middle"]


def test_every_record_has_its_measured_and_predicted_parts(records):
    for name in ("input", "middle"):
        assert len(records[name]) == 5
    for r in all_records(records):
        for key in MEASURED + PREDICTED:
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, (key, r[key])
        assert r["uplink_s"] > 0 and r["server_s"] > 0 and r["bytes_up"] > 0 and not r["fallback"]
        parts = sum(r[k] for k in MEASURED if k not in ("latency_s", "queue_s", "decode_s"))
        assert parts <= r["latency_s"] + 1e-6  # the parts are disjoint pieces of the measured whole
        terms = [v for k, v in r.items() if k.startswith("predicted_") and k != "predicted_latency_s"]
        assert sum(terms) == pytest.approx(r["predicted_latency_s"])


def test_the_oracle_rate_predicts_the_uplink_from_the_bytes_crossing(records):
    for name in ("input", "middle"):
        for r in records[name]:
            assert r["rate_estimate_bps"] == RATE_BPS
            # the frame adds its header to the codec payload; the model assumes a fixed overhead
            assert r["predicted_uplink_s"] == pytest.approx(8 * r["bytes_up"] / RATE_BPS, rel=0.05, abs=1e-4)
            # a paced link is never faster than its rate (the measured uplink also holds the delay)
            assert r["uplink_s"] >= 0.95 * r["predicted_uplink_s"]


def test_prediction_is_close_to_the_measured_latency(records):
    errors = [abs(r["predicted_latency_s"] - r["latency_s"]) / r["latency_s"] for r in all_records(records)]
    assert statistics.median(errors) <= 0.5, errors


def test_references_are_filled_in_and_agree_with_the_split_model(records):
    for r in all_records(records):
        assert r["reference"] is not None
        assert r["prediction"] == r["reference"]
