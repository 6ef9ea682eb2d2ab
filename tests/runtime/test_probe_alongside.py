"""Probes beside device-only requests on both runtimes: during an outage the device runs on its
own and probes while it computes, so no request waits for a probe, and the device offloads again
soon after the channel comes back (MobileNetV3-small at 64 px on a slow device, a shaped link,
a hand-made outage, closed-loop arrivals)."""

import pytest

from splitcomp.build import socket_bench

OUTAGE = (0.5, 2.0)  # seconds of scenario time with a dead channel
SCENARIO = ["model=torchvision", "model.name=mobilenet_v3_small", "dataset.image_size=64", "link=shaped",
            "link.delay_s=0.002", "link.max_transfer_s=2.0", "device.slowdown=10", "server_load=none",
            "profile.batch_sizes=[1]", "profile.repeats=3", "estimator=ewma", "estimator.max_age_s=0.25",
            "profile.check=false",  # the probes are tested here; a busy machine may fail the profile checks
            "channel=step", f"channel.steps=[[0,1e9],[{OUTAGE[0]},0],[{OUTAGE[1]},1e9]]",
            "arrivals=closed_loop", "requests=200", "dataset.limit=200"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alongside")
    with socket_bench([*SCENARIO, f"profile.cache_dir={tmp / 'profiles'}"], tmp / "run") as bench:
        return {"real": bench.run("dynamic"), "sim": bench.simulate("dynamic", noise=0.0)}


def test_no_request_waits_for_a_probe_in_an_outage_and_offloading_comes_back(runs):
    for runtime, records in runs.items():
        assert records[0]["cut_name"] != "output", runtime  # offloading wins at 1 Gbit/s
        alone = [r for r in records if OUTAGE[0] + 0.5 < r["t_start"] < OUTAGE[1]]
        assert len(alone) >= 5 and all(r["cut_name"] == "output" for r in alone), runtime
        # closed loop: a probe before each request would hold it back to the probe's deadline
        assert all(r["probe_s"] == 0 for r in alone), (runtime, [r["probe_s"] for r in alone])
        back = [r for r in records if OUTAGE[1] + 0.6 < r["t_start"]]
        assert len(back) >= 5 and all(r["cut_name"] != "output" for r in back), runtime
