"""The trace-driven simulator: records, the oracle bound, estimation, probing, outages, load."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from toy_profiles import DEVICE_ONLY_S, toy_candidates

from splitcomp.errors import ConfigError
from splitcomp.policy import (
    Bandit,
    BestStatic,
    DeviceOnly,
    Dynamic,
    EwmaEstimator,
    LastEstimator,
    Neurosurgeon,
    Oracle,
    OracleEstimator,
    ServerOnly,
    Static,
)
from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles
from splitcomp.records import PART_FIELDS
from splitcomp.scenario import BatchLoad, ClientsLoad, LoadModel, markov, random_walk, square, step
from splitcomp.scenario.arrivals import ClosedLoop, Periodic, Poisson
from splitcomp.scenario.trace import Trace
from splitcomp.sim import RECORD_FIELDS, RunEnv, SimRuntime, compare_policies, simulate, simulate_env

OLD_FIELDS = {
    "request", "t_start", "cut", "cut_name", "bytes_up", "bytes_down", "device_s", "encode_s", "uplink_s",
    "queue_s", "server_s", "downlink_s", "decode_s", "latency_s", "predicted_latency_s", "rate_trace_bps",
    "rate_estimate_bps", "server_load", "fallback", "prediction", "reference", "label",
}


def candidates() -> list[CutProfile]:
    """The toy profiles, with a codec time on the "mid" cut."""
    return toy_candidates(mid_codec_s=0.001)


def env(uplink: Trace, policy=None, n: int = 200, **kw) -> RunEnv:
    cands = candidates()
    kw.setdefault("estimator", EwmaEstimator(max_age_s=0.5))
    kw.setdefault("arrivals", Periodic(0.1))
    return RunEnv(cands, LatencyModel(Profiles({}, cands), rtt_s=0.01), policy or Dynamic(), uplink=uplink,
                  n_requests=n, **kw)


def latencies(records) -> np.ndarray:
    return np.array([r["latency_s"] for r in records])


class Slowdown(LoadModel):
    kind = "trace"

    def slowdown_at(self, t: float) -> float:
        return 3.0 if t % 10 < 5 else 1.0


OUTAGE = step([[0, 60e6], [6, 0.0], [9, 3e6], [14, 120e6]], duration=20)
SCENARIOS = {
    "constant": (Trace([0.0], [15e6], 30.0), None),
    "square_batch": (square(100e6, 2e6, period_s=4, duration=30), BatchLoad(schedule=[[0, 1], [7, 8], [14, 1]])),
    "outage_clients": (OUTAGE, ClientsLoad(clients=0, rate_hz=40, schedule=[[0, 0], [3, 6], [12, 0]])),
    "markov_slowdown": (markov(good_bps=80e6, bad_bps=3e6, mean_good_s=3, mean_bad_s=2, duration=30, seed=2),
                        Slowdown()),
    "walk": (random_walk(start_bps=20e6, min_bps=0.5e6, max_bps=200e6, sigma=0.5, duration=30, seed=4), None),
}


def test_records_keep_every_field_users_know_and_their_parts_add_up():
    records = simulate_env(env(OUTAGE, n=50, load_model=ClientsLoad(clients=2, rate_hz=10)))
    assert OLD_FIELDS <= set(RECORD_FIELDS)
    for r in records:
        assert tuple(r) == RECORD_FIELDS
        assert r["prediction"] is None and r["reference"] is None and r["label"] is None
        assert sum(r[k] for k in PART_FIELDS) == pytest.approx(r["latency_s"], abs=1e-9)
        assert r["unaccounted_s"] == pytest.approx(0.0, abs=1e-9)
    assert [r["request"] for r in records] == list(range(50))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_oracle_is_never_slower_than_any_policy(name):
    """Periodic arrivals give every policy the same start times, so the bound holds per request."""
    uplink, load = SCENARIOS[name]
    base = env(uplink, n=200, load_model=load)
    policies = {
        "oracle": Oracle(), "device_only": DeviceOnly(), "server_only": ServerOnly(), "mid": Static("mid"),
        "best_static": BestStatic(simulate=simulate_env), "dynamic": Dynamic(), "dynamic_h": Dynamic(hysteresis=0.2),
        "neurosurgeon": Neurosurgeon(), "bandit": Bandit(),
    }
    runs = compare_policies(base, policies)
    oracle = latencies(runs["oracle"])
    starts = [r["t_due"] for r in runs["oracle"]]
    for policy, records in runs.items():
        assert [r["t_due"] for r in records] == starts
        lat = latencies(records)
        assert np.all(oracle <= lat + 1e-9), f"{policy} beats the oracle on {name}"
        assert oracle.mean() <= lat.mean() + 1e-12
    assert not any(r["fallback"] for r in runs["oracle"])


def test_prediction_is_exact_with_the_true_rate_and_no_noise():
    records = simulate_env(env(Trace([0.0], [15e6], 30.0), estimator=OracleEstimator(), n=100))
    for r in records:
        assert r["predicted_latency_s"] == pytest.approx(r["latency_s"], rel=1e-9)


def test_noise_makes_prediction_errors_visible_but_unbiased():
    records = simulate_env(env(Trace([0.0], [15e6], 30.0), policy=Static("mid"), estimator=OracleEstimator(),
                               n=2000, sim_options={"noise": 0.2}))
    ratio = np.array([r["latency_s"] / r["predicted_latency_s"] for r in records])
    assert ratio.std() > 0.02
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)


def test_a_fixed_seed_gives_identical_runs():
    def run(seed, policy):
        e = env(SCENARIOS["walk"][0], policy, n=300, seed=seed, arrivals=Poisson(8.0), sim_options={"noise": 0.1})
        return simulate_env(e)

    for make in (Dynamic, Bandit):
        a, b = run(5, make()), run(5, make())
        assert a == b
        assert [r["t_start"] for r in run(6, make())] != [r["t_start"] for r in a]


def test_the_estimator_learns_the_rate_from_the_uplink_transfers():
    e = env(Trace([0.0], [20e6], 30.0), policy=Static("input"), estimator=LastEstimator())
    records = simulate_env(e)
    assert records[-1]["rate_estimate_bps"] == pytest.approx(20e6)
    frame = e.latency_model.frames.request_bytes("input", 150_000)
    assert records[-1]["bytes_up"] == frame and 150_000 < frame < 150_400  # payload plus the frame's header


def test_device_only_requests_feed_nothing_but_probes_beside_them_keep_the_estimate_fresh():
    """Dynamic on a slow channel runs on the device; probes sent while it computes (about one a
    second, the estimator's max age) follow the rate and hold no request back: only the first
    request waits, for the first and smallest probe. A policy that never reads the estimate
    never probes."""
    slow = step([[0, 3e6], [10, 1e6]], duration=20)
    stats, quiet = {}, {}
    records = simulate_env(env(slow, policy=Dynamic(), estimator=LastEstimator(max_age_s=1.0)), stats=stats)
    assert all(r["bytes_up"] == 0 for r in records)
    assert 18 <= stats["probes"] <= 21
    assert records[-1]["rate_estimate_bps"] == pytest.approx(1e6, rel=0.05)
    assert 0 < records[0]["probe_s"] < 0.05  # MIN_PROBE_BYTES at 3 Mbit/s, and the round trip
    # a probe between two requests is sized to fit the gap (but for its frame header and answer)
    assert all(r["probe_s"] < 0.005 for r in records[1:])
    simulate_env(env(slow, policy=DeviceOnly(), estimator=LastEstimator(max_age_s=1.0)), stats=quiet)
    assert quiet["probes"] == 0


def _offload_share_after(records, t):
    late = [r for r in records if r["t_start"] > t]
    return sum(r["cut_name"] != "output" for r in late) / len(late)


def test_probes_recover_a_stale_estimate_after_a_dip():
    """The starvation trap: after a dip the policy goes device-only and stops measuring; only
    probing brings offloading back once the channel recovers."""
    dip = step([[0, 50e6], [10, 0.3e6], [25, 50e6]], duration=60)
    closed = ClosedLoop()
    stats = {}
    probing = simulate_env(env(dip, n=600, arrivals=closed, estimator=EwmaEstimator(max_age_s=0.5)), stats=stats)
    passive = simulate_env(env(dip, n=600, arrivals=closed, estimator=EwmaEstimator(max_age_s=1e9)))
    for records in (probing, passive):
        assert records[-1]["t_start"] > 30
        assert all(r["cut_name"] == "output" for r in records if 20 < r["t_start"] < 25)
    assert stats["probes"] >= 5
    assert _offload_share_after(probing, 27.0) > 0.95
    assert _offload_share_after(passive, 27.0) == 0.0  # without probes it never comes back


def test_open_transfers_stop_a_stale_estimate_from_flooding_an_outage():
    outage = step([[0, 100e6], [5, 0.0], [10, 100e6]], duration=20)
    stats = {}
    records = simulate_env(env(outage, n=150, give_up=False), stats=stats)
    assert 1 <= stats["fallbacks"] <= 3  # only the requests sent before the first one got stuck
    assert all(r["cut_name"] == "output" for r in records if 5.5 < r["t_start"] < 10)


def test_an_upload_into_an_outage_is_given_up_when_the_device_would_finish_sooner():
    """The deadline-aware give-up: a request sent into the outage stops waiting for the link a few
    milliseconds after its upload should have ended, not at the 1 s deadline."""
    outage = step([[0, 100e6], [5, 0.0], [10, 100e6]], duration=20)
    stats, patient = {}, {}
    records = simulate_env(env(outage, n=150, estimator=EwmaEstimator(max_age_s=0.5, fast_drop=True)), stats=stats)
    waited = simulate_env(env(outage, n=150, give_up=False), stats=patient)
    given_up = [r for r in records if r["fallback"]]
    assert given_up and stats["fallbacks"] == len(given_up)
    for r in given_up:
        assert 4.9 <= r["t_start"] < 10
        # nothing through when the upload should have ended (1.5 x 12 ms + 2 ms, after the 5 ms
        # one-way delay): even the chunk in flight could not make the rest beat the device
        assert r["uplink_s"] == pytest.approx(0.005 + 1.5 * 8 * 150_040 / 100e6 + 0.002, abs=0.002)
        assert r["latency_s"] - r["wait_s"] - r["probe_s"] == pytest.approx(r["uplink_s"] + r["device_s"] + r["encode_s"])
    assert len(given_up) == 1  # fast drop: the abandoned upload's rate (0) is the next estimate
    assert latencies(records).max() < 0.2 < latencies(waited).max()
    assert latencies(records).mean() < latencies(waited).mean()


def test_a_slow_upload_is_given_up_only_when_finishing_alone_is_sooner():
    """A rate 5x lower than estimated: the full input (150 kB) is given up once its rest at the rate
    seen beats the device's; a small upload (one chunk) that could still beat the device goes on."""
    from splitcomp.link.shaping import GiveUp, pace

    slow = Trace([0.0], [10e6], 10.0)  # estimated 50 Mbit/s: uploads should take 5x less
    full = pace(slow, 150_000, 0.0, 1.0, give_up=GiveUp(after_s=1.5 * 8 * 150_000 / 50e6, device_rest_s=0.080))
    late = pace(slow, 4_000, 0.0, 1.0, give_up=GiveUp(after_s=1.5 * 8 * 4_000 / 50e6, device_rest_s=0.020))
    assert full.stopped == "give_up" and full.end_t == pytest.approx(0.036)
    assert full.carried_bytes == pytest.approx(10e6 * 0.036 / 8)
    assert late.stopped is None and late.end_t == pytest.approx(8 * 4_000 / 10e6)


def test_outages_end_in_a_timeout_and_a_fallback():
    stats = {}
    records = simulate_env(env(OUTAGE, policy=ServerOnly(), n=200, timeout_s=1.0), stats=stats)
    fallbacks = [r for r in records if r["fallback"]]
    assert fallbacks and stats["fallbacks"] == len(fallbacks)
    for r in fallbacks:  # the timeout, then the whole model on the device, after any wait
        assert r["latency_s"] - r["wait_s"] == pytest.approx(1.0 + DEVICE_ONLY_S)
        assert r["uplink_s"] == pytest.approx(1.0) and r["bytes_down"] == 0
    assert all(math.isfinite(r["latency_s"]) for r in records)


def test_a_dead_channel_never_divides_by_zero():
    dead = Trace([0.0], [0.0], 10.0)
    for policy in (Dynamic(), ServerOnly(), Oracle(), Bandit(), Neurosurgeon()):
        records = simulate_env(env(dead, policy=policy, n=30))
        assert all(math.isfinite(r["latency_s"]) for r in records)
        assert all(r["latency_s"] - r["wait_s"] - r["probe_s"] <= 1.0 + DEVICE_ONLY_S + 1e-9 for r in records)
    assert {r["cut_name"] for r in simulate_env(env(dead, n=30))} == {"output"}


def test_server_load_models_shape_the_server_terms():
    fast = Trace([0.0], [1e9], 10.0)
    batch = simulate_env(env(fast, Static("input"), n=5, load_model=BatchLoad(batch_size=8)))
    assert batch[0]["server_s"] == pytest.approx(0.040) and batch[0]["server_load"] == 8
    clients = simulate_env(env(fast, Static("input"), n=5, load_model=ClientsLoad(clients=3, rate_hz=10)))
    rho = 3 * 10 * 0.010 / (1 + 10 * 0.010)  # each client sends once per 1/rate_hz + its own service
    assert clients[0]["queue_s"] == pytest.approx(rho * 0.010 / (2 * (1 - rho)), rel=0.05)  # M/D/1
    closed = simulate_env(env(fast, Static("input"), n=5, load_model=ClientsLoad(clients=3)))
    assert closed[0]["queue_s"] == pytest.approx(2.5 * 0.010)  # two queued ahead and half of one running
    slow = simulate_env(env(fast, Static("mid"), n=5, load_model=Slowdown()))
    assert slow[0]["server_s"] == pytest.approx(3 * 0.006)


def test_dynamic_moves_away_from_a_loaded_server():
    fast = Trace([0.0], [300e6], 20.0)
    load = BatchLoad(schedule=[[0, 1], [10, 64]])
    records = simulate_env(env(fast, n=200, load_model=load))
    assert all(r["cut_name"] == "input" for r in records[10:90])
    assert all(r["cut_name"] != "input" for r in records[-50:])


def test_sim_runtime_runs_an_environment():
    runtime = SimRuntime(n_requests=25, noise=0.1)
    records = runtime.run(env(OUTAGE, n=999))
    assert len(records) == 25 and "probes" in runtime.stats
    with pytest.raises(ConfigError):
        SimRuntime(noise=-1)


def test_simulate_checks_its_arguments():
    e = env(OUTAGE)
    with pytest.raises(ConfigError):
        simulate(e.candidates, e.latency_model, Dynamic(), e.estimator, e.arrivals, e.uplink, n_requests=0)
    with pytest.raises(ConfigError):
        simulate([], e.latency_model, Dynamic(), e.estimator, e.arrivals, e.uplink)
    with pytest.raises(ConfigError):
        simulate_env(dataclasses.replace(e, timeout_s=0))


def test_a_device_that_stopped_offloading_learns_from_probes_when_the_load_drops():
    fast = Trace([0.0], [300e6], 30.0)
    records = simulate_env(env(fast, n=300, load_model=BatchLoad(schedule=[[0, 1], [10, 64], [20, 1]])))
    assert all(r["cut_name"] != "input" for r in records if 12 < r["t_due"] < 20)
    assert all(r["cut_name"] == "input" for r in records if r["t_due"] > 22)


def test_a_probe_before_a_request_is_inside_it_and_one_beside_a_device_only_request_is_not():
    """Dynamic on a channel too slow for any probe within its deadline, closed loop: the first
    probe, before request 0, runs to its deadline inside that request; the later ones go while
    the device computes, end before it does, and cost no request anything."""
    slow = Trace([0.0], [0.02e6], 30.0)  # the smallest probe (1 kB) needs 0.4 s
    stats = {}
    records = simulate_env(env(slow, n=100, arrivals=ClosedLoop(), estimator=EwmaEstimator(max_age_s=0.5)),
                           stats=stats)
    assert stats["failed_probes"] == stats["probes"] >= 3
    first, *rest = records
    assert first["probe_s"] == pytest.approx(DEVICE_ONLY_S)  # closed loop: from the due time to its deadline
    assert first["latency_s"] == pytest.approx(first["probe_s"] + first["device_s"])
    assert all(r["probe_s"] == 0 and r["latency_s"] == pytest.approx(r["device_s"]) for r in rest)


def test_measured_factors_replace_the_noise_and_may_follow_scenario_time():
    from splitcomp.loop import run_requests
    from splitcomp.sim import SimBackend

    run = env(Trace([0.0], [15e6], 30.0), DeviceOnly(), n=20)
    constant = run_requests(run, SimBackend(run, noise=None, device_factors=[2.0]))
    assert all(r["device_s"] == pytest.approx(2 * DEVICE_ONLY_S) for r in constant)
    by_time = run_requests(run, SimBackend(run, noise=None, device_factors=lambda t: [3.0] if t >= 1.0 else [1.0]))
    assert [r["device_s"] == pytest.approx(3 * DEVICE_ONLY_S) for r in by_time] == [r["t_start"] >= 1.0 for r in by_time]


def test_probes_shrink_to_what_the_estimate_says_can_cross_in_time():
    """On a 1 Mbit/s channel a full 16 kB probe needs 130 ms, past its 80 ms deadline. The first
    probe, before any estimate, is the smallest; the later ones carry what crosses in a quarter
    of their deadline at the rate measured: none is given up."""
    slow = Trace([0.0], [1e6], 30.0)
    stats = {}
    simulate_env(env(slow, n=150, arrivals=ClosedLoop(), estimator=EwmaEstimator(max_age_s=0.5)), stats=stats)
    assert stats["probes"] >= 4 and stats["failed_probes"] == 0


def test_probes_beside_device_only_requests_see_the_channel_come_back():
    """At 0.3 Mbit/s no cut pays: the device runs on its own and probes while it computes, once
    per max age, holding no request back; once the channel is fast again, the next probe brings
    offloading back."""
    dip = step([[0, 0.3e6], [20, 50e6]], duration=40)
    stats = {}
    records = simulate_env(env(dip, n=300, arrivals=Periodic(0.1), estimator=EwmaEstimator(max_age_s=0.5)),
                           stats=stats)
    early = [r for r in records if 2 < r["t_start"] < 20]
    assert all(r["cut_name"] == "output" for r in early)
    assert 36 <= stats["probes"] <= 44  # one per 0.5 s until 20 s, then the uploads measure
    assert all(r["probe_s"] == 0 for r in records[1:])
    assert _offload_share_after(records, 20.7) > 0.9


def test_an_answer_held_up_on_the_downlink_is_given_up_and_the_device_stops_offloading():
    """The uplink stays fast while the downlink dies from 2 s to 6 s: the answer to the first
    request offloaded into the outage is waited for only about its expected time plus the rest
    of the model (not the run's 1 s timeout); the device then counts the server's side as at
    least that slow, runs on its own until a probe's answer comes back, and offloads again after."""
    fast = Trace([0.0], [300e6], 10.0)
    dead_down = step([[0, 300e6], [2, 0.0], [6, 300e6]], duration=10)
    stats = {}
    records = simulate_env(env(fast, n=100, downlink=dead_down), stats=stats)
    late = [r for r in records if r["fallback"]]
    assert 1 <= len(late) <= 2 and stats["fallbacks"] == len(late)
    for r in late:
        assert 2.0 <= r["t_start"] < 2.5
        assert r["uplink_s"] > 0 and r["bytes_down"] == 0 and r["server_s"] == 0
        # 1.5 x the ~20 ms expected (tail and round trip) + the 80 ms the device needs alone
        assert r["downlink_s"] == pytest.approx(1.5 * 0.020 + DEVICE_ONLY_S, abs=0.005)
        assert r["latency_s"] - r["wait_s"] - r["probe_s"] < 0.25  # far below the 1 s timeout
    assert all(r["cut_name"] == "output" for r in records if late[-1]["t_start"] < r["t_start"] < 6)
    assert _offload_share_after(records, 7.0) > 0.9


def test_without_the_give_up_an_answer_held_up_on_the_downlink_costs_the_whole_timeout():
    fast = Trace([0.0], [300e6], 10.0)
    dead_down = step([[0, 300e6], [2, 0.0], [6, 300e6]], duration=10)
    records = simulate_env(env(fast, n=100, downlink=dead_down, give_up=False))
    late = [r for r in records if r["fallback"]]
    assert late and all(r["downlink_s"] >= 1.0 - 1e-9 for r in late)


@pytest.mark.parametrize("interval_s", [0.05, 0.09])
def test_no_request_is_held_back_by_a_probe_once_there_is_an_estimate(interval_s):
    """At 2 Mbit/s device-only wins, though a split would at 4 times the rate. Requests arrive
    faster than the device serves them alone (0.05 s: a backlog) or leave it free 10 ms before each
    (0.09 s: too little for the smallest probe and its answer): after the first, the probes go
    while the device computes, one per max age, and hold no request back."""
    slow = Trace([0.0], [2e6], 30.0)
    stats = {}
    records = simulate_env(env(slow, n=200, arrivals=Periodic(interval_s), estimator=EwmaEstimator(max_age_s=0.2)),
                           stats=stats)
    assert all(r["cut_name"] == "output" for r in records)
    assert all(r["probe_s"] == 0 for r in records[1:])
    assert stats["probes"] >= records[-1]["t_start"] / (0.2 + interval_s)  # at the first request past each max age


def test_closed_loop_on_a_real_clock_probes_beside_the_requests_and_holds_none_back():
    """Closed-loop arrivals: each request is due when the previous one is done, and a real
    backend's clock has moved on a little by the time the loop looks (here 1 ms). At 2 Mbit/s
    (device-only wins, a split would at 4x the rate) the device still probes about once per max
    age, beside its requests, and no request after the first waits for a probe."""
    from splitcomp.loop import run_requests
    from splitcomp.sim import SimBackend

    class LaggingClock(SimBackend):
        def now(self) -> float:
            return self.t + 0.001

    run = env(Trace([0.0], [2e6], 30.0), n=150, arrivals=ClosedLoop(), estimator=EwmaEstimator(max_age_s=0.2))
    stats = {}
    records = run_requests(run, LaggingClock(run, noise=0.0), stats=stats)
    assert all(r["cut_name"] == "output" for r in records[5:])
    assert stats["probes"] >= records[-1]["t_start"] / 0.2 / 2  # about one per max age (12 s: 30+)
    assert all(r["probe_s"] == 0 for r in records[1:])


def test_a_device_too_fast_to_probe_beside_its_requests_probes_a_stale_estimate_all_the_same():
    """A device 5x faster (device-only 16 ms, too short to measure a link beside it) with a
    growing backlog at 2 Mbit/s, where device-only wins: every request is already due when the
    device is free, so the probes before them are skipped until the estimate is
    ``STALE_ESTIMATE_S`` old; then one holds a request back."""
    from splitcomp.loop import STALE_ESTIMATE_S

    fast = [dataclasses.replace(c, head_s={b: h / 5 for b, h in c.head_s.items()}) for c in candidates()]
    run = env(Trace([0.0], [2e6], 30.0), n=700, arrivals=Periodic(0.01), estimator=EwmaEstimator(max_age_s=0.2))
    run = dataclasses.replace(run, candidates=fast, latency_model=LatencyModel(Profiles({}, fast), rtt_s=0.01))
    stats = {}
    records = simulate_env(run, stats=stats)
    assert all(r["cut_name"] == "output" for r in records)
    held = [r for r in records[1:] if r["probe_s"] > 0]
    assert 1 <= len(held) <= records[-1]["t_start"] / STALE_ESTIMATE_S + 1
    assert stats["probes"] == len(held) + 1  # the first measurement, then only the stale ones
