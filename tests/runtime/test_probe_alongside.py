"""Probes beside device-only requests on both runtimes: during an outage the device runs on its
own and probes while it computes, so no request waits for a probe, and the device offloads again
soon after the channel comes back (MobileNetV3-small at 64 px on a slow device, a shaped link,
a hand-made outage, closed-loop arrivals)."""

from slow_device import real_and_sim

OUTAGE = (0.5, 2.0)  # seconds of scenario time with a dead channel
SCENARIO = ["link.max_transfer_s=2.0", "estimator.max_age_s=0.25",
            "channel=step", f"channel.steps=[[0,1e9],[{OUTAGE[0]},0],[{OUTAGE[1]},1e9]]",
            "arrivals=closed_loop", "requests=200", "dataset.limit=200"]


def test_no_request_waits_for_a_probe_in_an_outage_and_offloading_comes_back(tmp_path):
    for runtime, records in real_and_sim(SCENARIO, tmp_path).items():
        assert records[0]["cut_name"] != "output", runtime  # offloading wins at 1 Gbit/s
        alone = [r for r in records if OUTAGE[0] + 0.5 < r["t_start"] < OUTAGE[1]]
        assert len(alone) >= 5 and all(r["cut_name"] == "output" for r in alone), runtime
        # closed loop: a probe before each request would hold it back to the probe's deadline
        assert all(r["probe_s"] == 0 for r in alone), (runtime, [r["probe_s"] for r in alone])
        back = [r for r in records if OUTAGE[1] + 0.6 < r["t_start"]]
        assert len(back) >= 5 and all(r["cut_name"] != "output" for r in back), runtime
