import pytest
import torch

from splitcomp.fleet.metrics import fleet_figures
from splitcomp.fleet.real import HeadCache, run_real_fleet
from splitcomp.fleet.scenario import FleetSpec, device_envs
from splitcomp.fleet.sim import BatchServerModel, SimJob, simulate_fleet
from splitcomp.fleet.workload import build_fleet_workload
from splitcomp.loop import RunEnv
from splitcomp.policy.estimators import EwmaEstimator
from splitcomp.policy.fleet_aware import FleetAware
from splitcomp.policy.simple import ServerOnly, Static
from splitcomp.profile.latency import CutProfile, LatencyModel
from splitcomp.runtime.server import ServerSettings
from splitcomp.scenario.arrivals import Periodic
from splitcomp.scenario.trace import Trace

TRACE = "../shared/traces/multipath_wireless_aydini/7_1_cellular.csv"


def _cut(index=0):
    return CutProfile(index, f"c{index}", 1000, 40, {1: 0.001}, {1: 0.010, 2: 0.012, 4: 0.016})


def _serve(server, arrivals):
    """Queue (cut, t) jobs at ``server`` with no device behind them; the jobs once all are done."""
    jobs = [SimJob(cut, t) for cut, t in arrivals]
    for job in jobs:
        server.arrive(job)
    server.clock.run([])
    return jobs


def test_requests_of_one_cut_within_max_wait_share_a_batch():
    server = BatchServerModel(max_batch=4, max_wait_s=0.005)
    a, b, other = _serve(server, [(_cut(), 1.000), (_cut(), 1.003), (_cut(1), 1.004)])
    assert [batch.size for batch in server.batches] == [2, 1]
    assert a.queue_s == pytest.approx(0.005) and b.queue_s == pytest.approx(0.002)  # the batch closes at 1.005
    assert a.server_s == b.server_s == pytest.approx(0.012)  # both wait for the whole batch
    assert a.report.batch_size == b.report.batch_size == 2 and a.report.queue_len == 0 and b.report.queue_len == 1
    assert server.batches[1].start == pytest.approx(1.005 + 0.012)  # another cut: its own batch, behind
    assert other.report.batch_size == 1


def test_without_batching_requests_run_one_after_another():
    server = BatchServerModel(batching=False)
    _, second = _serve(server, [(_cut(), 1.0), (_cut(), 1.001)])
    assert len(server.batches) == 2 and second.queue_s == pytest.approx(0.009)


def test_a_busy_server_lets_a_batch_grow_beyond_max_wait():
    server = BatchServerModel(max_batch=8, max_wait_s=0.001)
    _serve(server, [(_cut(1), 0.0)] + [(_cut(), t) for t in (0.002, 0.005, 0.009)])  # busy until 0.011
    assert [b.size for b in server.batches] == [1, 3]
    assert server.batches[1].start == pytest.approx(0.011)


def test_a_full_batch_starts_without_waiting():
    server = BatchServerModel(max_batch=2, max_wait_s=1.0)
    jobs = _serve(server, [(_cut(), 0.0), (_cut(), 0.001), (_cut(), 0.002)])
    assert server.batches[0].start == pytest.approx(0.001) and jobs[2].queue_s == pytest.approx(1.0)


def test_every_member_of_a_batch_waits_for_the_whole_batch(small):
    """Two devices due together at one cut share a batch: both answers come when it is done."""
    cuts = list(small.profiles.cuts)
    full = next(i for i, c in enumerate(cuts) if c.is_full_offload)
    server = BatchServerModel(max_batch=8, max_wait_s=0.01)
    envs = [RunEnv(cuts, LatencyModel(small.profiles), Static(full), EwmaEstimator(), Periodic(1.0),
                   Trace([0.0], [50e6], 5.0), n_requests=1, seed=i, rtt_s=0.0, probes=False,
                   sim_options={"noise": 0.0}) for i in range(2)]
    records = simulate_fleet(envs, server)
    first, second = records[0][0], records[1][0]
    assert len(server.batches) == 1 and server.batches[0].size == 2
    assert first.server_s == second.server_s == pytest.approx(cuts[full].tail_at(2))
    assert first.latency_s == pytest.approx(second.latency_s)


def test_a_probe_learns_the_recent_queueing_delay_which_stays_while_nobody_is_served():
    server = BatchServerModel(max_batch=1, max_wait_s=0.0)
    _serve(server, [(_cut(), 0.0), (_cut(), 0.0)])  # the second waits 10 ms
    report = server.probe_report()
    assert report.queue_len == 0 and report.queue_s == pytest.approx(0.2 * 0.010)  # as the real server's mean


@pytest.fixture(scope="module")
def small():
    return build_fleet_workload(device_slowdown=4, width=16, batch_sizes=(1, 2, 4), repeats=2)


def _envs(work, devices, requests, policy):
    spec = FleetSpec(devices=devices, traces=(TRACE,), rate_hz=20.0, requests=requests, window_spacing_s=10.0)
    return device_envs(spec, list(work.profiles.cuts), LatencyModel(work.profiles), policy, EwmaEstimator)


def test_the_device_can_be_pinned_to_a_device_only_time():
    work = build_fleet_workload(width=8, batch_sizes=(1, 2), repeats=1, device_only_s=0.05)
    assert next(c for c in work.profiles.cuts if c.is_device_only).head_at(1) == pytest.approx(0.05)


def test_a_simulated_fleet_interleaves_devices_on_one_server(small):
    server = BatchServerModel(max_batch=8, max_wait_s=0.002)
    records = simulate_fleet(_envs(small, 20, 30, ServerOnly), server)
    assert [len(r) for r in records] == [30] * 20
    figures = fleet_figures(records, server.history())
    assert figures.requests == 600 and sum(figures.batch_sizes.values()) == len(server.batches)
    assert figures.batch_size_mean > 1.0  # twenty devices at 20 requests/s share batches


def test_emulated_devices_send_the_real_head_output_and_get_exact_answers(small):
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    cuts = [c.index for c in small.profiles.cuts]
    cache = HeadCache(small.model, small.plan, images, cuts)
    for cut in cuts:  # the cache holds what the head computes
        head, _ = small.plan.split(small.plan.cuts[cut])
        with torch.inference_mode():
            assert all(torch.equal(a, b) for a, b in zip(cache.head(cut, images[1].unsqueeze(0)),
                                                         head(images[1].unsqueeze(0))))
    result = run_real_fleet(_envs(small, 2, 6, lambda: FleetAware(margin=0.9)), small.model, small.plan,
                            small.example, small.fingerprint, small.codec, images,
                            ServerSettings(batching=True, max_batch=8, max_wait_s=0.002), cache=cache)
    offloaded = [r for device in result.records for r in device if r.bytes_up > 0]
    assert [len(r) for r in result.records] == [6, 6] and offloaded
    by_name = {c.name: c for c in small.profiles.cuts}
    for record in offloaded:
        assert not record.fallback and record.prediction == record.reference  # the server ran the real tensor
        assert record.bytes_up > by_name[record.cut_name].bytes_up  # the whole tensor crossed, with its frame
        # the device waited the profiled head time (a busy machine may wake it late, never early)
        head_s = by_name[record.cut_name].head_at(1)
        assert head_s - 1e-3 <= record.device_s <= head_s + 0.05
    assert sum(b.requests for b in result.batches) == len(offloaded)
