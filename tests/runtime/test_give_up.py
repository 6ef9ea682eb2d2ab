"""The deadline-aware give-up on both runtimes: an upload sent into an outage is abandoned as soon
as the device would finish sooner, long before the link's ``max_transfer_s``, and the request
falls back (MobileNetV3-small at 64 px on a slow device, a shaped link, a hand-made outage)."""

import pytest
from slow_device import real_and_sim

TIMEOUT_S = 2.0
SCENARIO = [f"link.max_transfer_s={TIMEOUT_S}", "estimator.fast_drop=true",
            # 1 Gbit/s, then a dead channel from 0.5 s on
            "channel=step", "channel.steps=[[0,1e9],[0.5,0],[50,1e9]]",
            "arrivals=periodic", "arrivals.interval_s=0.1", "dataset.limit=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return real_and_sim(SCENARIO, tmp_path_factory.mktemp("give_up"))


def test_an_upload_into_an_outage_is_given_up_long_before_its_deadline(runs):
    for runtime, records in runs.items():
        assert records[0]["cut_name"] != "output", runtime  # offloading wins at 1 Gbit/s
        given_up = [r for r in records if r["fallback"]]
        assert given_up, runtime
        for r in given_up:
            assert r["t_start"] >= 0.45, runtime  # only once the channel is dead
            assert r["uplink_s"] < TIMEOUT_S / 4, (runtime, r["uplink_s"])
            assert r["bytes_down"] == 0 and r["server_s"] == 0
            # the give-up, then the rest of the model on the device: nothing else
            assert r["latency_s"] - r["wait_s"] - r["probe_s"] == pytest.approx(
                r["connect_s"] + r["device_s"] + r["encode_s"] + r["uplink_s"], abs=0.02), runtime
        assert all(r["cut_name"] == "output" for r in records[-3:]), runtime


@pytest.fixture(scope="module")
def slowed_server_runs(tmp_path_factory):
    """The channel stays fast; from 0.5 s on the server's tail runs 150x slower."""
    tmp = tmp_path_factory.mktemp("late_answer")
    (tmp / "slowdown.csv").write_text("t_s,slowdown\n0,1\n0.5,150\n")
    fast = [o for o in SCENARIO if not o.startswith("channel.steps")] + ["channel.steps=[[0,1e9]]"]
    return real_and_sim([*fast, "server_load=trace", f"server_load.path={tmp / 'slowdown.csv'}"], tmp)


def test_an_answer_from_a_stalled_server_is_given_up_long_before_the_deadline(slowed_server_runs):
    for runtime, records in slowed_server_runs.items():
        assert records[0]["cut_name"] != "output", runtime
        given_up = [r for r in records if r["fallback"]]
        assert given_up, runtime
        for r in given_up:
            assert r["t_start"] >= 0.45, runtime
            assert r["bytes_down"] == 0 and r["server_s"] == 0, runtime
            assert r["uplink_s"] < TIMEOUT_S / 4, runtime  # the upload went through
            assert r["downlink_s"] < TIMEOUT_S / 4, (runtime, r["downlink_s"])  # the wait for the answer
        # told by the late answer, then by the probes' reports: the device works alone
        assert all(r["cut_name"] == "output" for r in records[-3:]), runtime
