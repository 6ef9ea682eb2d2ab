"""One request loop, one accounting rule: the real runtime and the simulator charge the same things.

Small real runs (MobileNetV3-small at 64 px, a shaped link with a 10 ms one-way delay, an
edge-server process) beside their simulation on the same scenario and profiles.
"""

import math

import pytest
from omegaconf import OmegaConf

from splitcomp.build import socket_bench
from splitcomp.loop import GIVE_UP_MIN_S
from splitcomp.records import PART_FIELDS, RECORD_FIELDS

BASE = ["model=torchvision", "model.name=mobilenet_v3_small", "dataset.image_size=64", "link=shaped",
        "server_load=none", "device.slowdown=4", "profile.batch_sizes=[1]", "profile.repeats=3", "estimator=ewma",
        "profile.check=false"]  # the accounting is tested here; a busy machine may fail the profile checks
TIMEOUT_S = 0.3
DELAY_S = 0.01  # the shaped link's one-way delay (conf/link/shaped.yaml)
OUTAGE = ["channel=step", "channel.steps=[[0,20e6],[0.6,0],[50,20e6]]", f"link.max_transfer_s={TIMEOUT_S}",
          "arrivals=periodic", "arrivals.interval_s=0.2", "dataset.limit=8"]
INTERVAL_S = 0.07
OVERLOAD = ["channel=constant", "channel.rate_bps=1e6", "arrivals=periodic", f"arrivals.interval_s={INTERVAL_S}",
            "dataset.limit=10"]


def server_only():
    return OmegaConf.create({"_target_": "splitcomp.policy.simple.ServerOnly"})


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """server_only into an 8-request run whose channel goes dead at 0.6 s: real and simulated."""
    tmp = tmp_path_factory.mktemp("outage")
    with socket_bench([*BASE, *OUTAGE, f"profile.cache_dir={tmp / 'profiles'}"], tmp / "run") as bench:
        return {"real": bench.run(server_only()), "sim": bench.simulate(server_only(), noise=0.0),
                "dynamic": bench.run("dynamic")}


def test_a_request_sent_into_an_outage_costs_the_time_before_its_fallback(outage):
    for runtime in ("real", "sim"):
        records = outage[runtime]
        assert [r["fallback"] for r in records] == [False] * 3 + [True] * 5, runtime
        for r in records[3:]:
            # the upload's deadline, then the whole model on the device
            assert r["uplink_s"] >= TIMEOUT_S - 0.01, (runtime, r["uplink_s"])
            assert r["latency_s"] - r["wait_s"] >= TIMEOUT_S + r["device_s"] - 0.01, runtime
            assert r["bytes_down"] == 0 and r["server_s"] == 0


def test_both_backends_record_the_same_fields_and_their_parts_add_up(outage):
    for runtime, records in outage.items():
        for r in records:
            assert tuple(r) == RECORD_FIELDS
            assert isinstance(r["latency_s"], float) and math.isfinite(r["latency_s"])
            assert sum(r[k] for k in PART_FIELDS) + r["unaccounted_s"] == pytest.approx(r["latency_s"])
            assert r["unaccounted_s"] >= -1e-6, runtime
        # what no part measured: the loop's own decisions and bookkeeping (a fraction of a
        # millisecond), and the operating system waking the device late on a busy machine
        unaccounted = sum(r["unaccounted_s"] for r in records)
        assert unaccounted <= 0.02 * sum(r["latency_s"] for r in records), (runtime, unaccounted)
    real, sim = outage["real"][0], outage["sim"][0]
    classes = ("prediction", "reference", "label")  # no tensors in the simulator
    assert {k: type(v) for k, v in real.items() if k not in classes} == \
           {k: type(v) for k, v in sim.items() if k not in classes}
    assert all(isinstance(real[k], int) and sim[k] is None for k in classes)


def test_a_failed_probe_leaves_no_dead_connection_behind(outage):
    """Dynamic in the outage: its probes time out, it runs on the device, and no request after a
    failed probe is a free fallback on a dead connection. Dynamic gives an upload up before its
    deadline once the device alone would finish sooner (``GiveUp``), so a fallback costs at least
    the one-way delay and the give-up's minimum time, never nothing, and then the whole model."""
    records = outage["dynamic"]
    late = records[4:]
    assert all(r["cut_name"] == records[-1]["cut_name"] for r in late)
    least_s = min(TIMEOUT_S, DELAY_S + GIVE_UP_MIN_S) - 0.001
    for r in (r for r in records if r["fallback"]):
        assert r["uplink_s"] >= least_s, r["uplink_s"]
        assert r["latency_s"] - r["wait_s"] >= r["uplink_s"] + r["device_s"] - 1e-6
        assert r["bytes_down"] == 0 and r["server_s"] == 0


@pytest.fixture(scope="module")
def overload(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    with socket_bench([*BASE, *OVERLOAD, f"profile.cache_dir={tmp / 'profiles'}"], tmp / "run") as bench:
        return bench.run(server_only()), bench.simulate(server_only(), noise=0.0)


def test_on_a_constant_channel_the_simulator_predicts_the_real_mean_latency(overload):
    """Requests every 70 ms that each take about 140 ms (a 12 kB image at 1 Mbit/s): every one
    waits for the one before, and the waits make up about half of the mean latency, the two
    one-way delays (20 ms) a tenth, the frame headers (about 0.5 kB each way) 3%. The bound, 15%,
    breaks when either runtime drops the waits or the delays; the real latencies must grow as the
    backlog does (a runtime that starts late requests without counting the wait keeps them flat).
    The server's compute, which a busy machine stretches, is a few percent of the latency.
    Two runtimes can agree by dropping the same time: the earlier ones both ignored the backlog
    (simulated requests overlapped, real ones started late without counting it) and agreed within
    10% at about 0.17 s a request, which is why the growth of the real latencies is checked too."""
    real, sim = overload
    real_mean = sum(r["latency_s"] for r in real) / len(real)
    sim_mean = sum(r["latency_s"] for r in sim) / len(sim)
    assert abs(sim_mean - real_mean) <= 0.15 * real_mean, (sim_mean, real_mean)
    service_s = min(r["latency_s"] - r["wait_s"] for r in real)
    assert service_s > 1.5 * INTERVAL_S
    assert real[-1]["latency_s"] >= real[0]["latency_s"] + 0.5 * (len(real) - 1) * (service_s - INTERVAL_S)
    assert all(r["t_due"] == pytest.approx(i * INTERVAL_S) for i, r in enumerate(real))
