import time

import pytest
import torch

from splitcomp.errors import PeerError
from splitcomp.link.codecs import RawCodec
from splitcomp.runtime.process import bind_listener
from splitcomp.scenario.load import BatchLoad, TraceLoad


def _request(client, plan, cut, x, request_id=0):
    head, _ = plan.split(cut)
    with torch.inference_mode():
        values = tuple(head(x))
    return client.exchange(client.request_frame(request_id, cut.index, values, RawCodec()))


def test_every_cut_over_the_socket_equals_the_unsplit_model(tiny, live_server, connect):
    model, _, plan, fingerprint = tiny
    _, port = live_server()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model(x)
    client = connect(port, fingerprint)
    assert any(not cut.single_tensor for cut in plan.cuts), "the tiny model should have multi-tensor cuts"
    for cut in plan.cuts[:-1]:
        reply = _request(client, plan, cut, x, cut.index)
        assert torch.equal(reply.logits, expected), cut.name
        assert reply.request == cut.index and reply.report.queue_len == 0
        assert reply.bytes_up > cut.bytes
    client.close()


def test_handshake_refuses_a_different_model(tiny, live_server, connect):
    _, _, _, fingerprint = tiny
    _, port = live_server()
    other = dict(fingerprint, weights="0" * 16)
    with pytest.raises(PeerError, match="different models: weights"):
        connect(port, other)
    connect(port, fingerprint).close()  # the server is still fine


def test_unknown_cut_and_wrong_shape_are_refused_and_server_survives(tiny, live_server, connect):
    _, _, plan, fingerprint = tiny
    server, port = live_server()
    client = connect(port, fingerprint)
    with pytest.raises(PeerError, match="does not exist"):
        client.exchange(client.request_frame(0, 999, (torch.zeros(1, 3, 32, 32, dtype=torch.uint8),), RawCodec()))
    client = connect(port, fingerprint)
    with pytest.raises(PeerError, match="does not fit this cut"):
        client.exchange(client.request_frame(0, 0, (torch.zeros(1, 3, 16, 16, dtype=torch.uint8),), RawCodec()))
    client = connect(port, fingerprint)
    reply = _request(client, plan, plan.cuts[0], torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert reply.logits.shape == (1, 5)
    assert server.rejected_frames == 2 and server.served >= 1  # each refusal counted


def test_batch_load_is_computed_and_reported(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    _, port = live_server(load_model=BatchLoad(batch_size=16))
    client = connect(port, fingerprint)
    reply = _request(client, plan, plan.cuts[0], example)
    assert reply.report.batch_size == 16 and reply.logits.shape == (1, 5)


def test_slowdown_trace_load_stretches_server_time(tiny, live_server, tmp_path, connect):
    _, example, plan, fingerprint = tiny
    path = tmp_path / "slow.csv"
    path.write_text("t,slowdown\n0,20\n")
    _, port = live_server(load_model=TraceLoad(path))
    client = connect(port, fingerprint)
    reply = _request(client, plan, plan.cuts[0], example)
    assert reply.report.slowdown == 20
    assert reply.report.server_s > 10 * reply.report.tail_s


def test_unreachable_server_and_port_in_use_are_one_sentence(tiny, connect, free_port):
    _, _, _, fingerprint = tiny
    with pytest.raises(PeerError, match="edge server at"):
        connect(free_port, fingerprint)
    listener = bind_listener("127.0.0.1", 0)
    with pytest.raises(PeerError, match="already in use"):
        bind_listener("127.0.0.1", listener.getsockname()[1])
    listener.close()


def test_background_clients_load_the_server(tiny, live_server, connect):
    from splitcomp.link.shaping import ScenarioClock
    from splitcomp.runtime.background import BackgroundClients
    from splitcomp.scenario.load import ClientsLoad

    _, example, plan, fingerprint = tiny
    server, port = live_server()
    idle = [_request(connect(port, fingerprint), plan, plan.cuts[0], example).report for _ in range(5)]
    with BackgroundClients(ClientsLoad(clients=4), lambda: connect(port, fingerprint), (example,),
                           ScenarioClock(), cut_index=0) as background:
        time.sleep(0.3)
        client = connect(port, fingerprint)
        loaded = [_request(client, plan, plan.cuts[0], example).report for _ in range(20)]
    assert background.sent > 20 and background.errors == 0
    assert max(r.queue_len for r in loaded) >= 1 and max(r.queue_len for r in idle) == 0
    assert sum(r.queue_s for r in loaded) > 2 * sum(r.queue_s for r in idle)


def test_a_clients_schedule_that_starts_at_zero_loads_the_server_once_it_rises(tiny, live_server, connect):
    from splitcomp.link.shaping import ScenarioClock
    from splitcomp.runtime.background import BackgroundClients
    from splitcomp.scenario.load import ClientsLoad

    _, example, _, fingerprint = tiny
    server, port = live_server()
    load = ClientsLoad(clients=0, schedule=[[0, 0], [0.5, 3]])
    with BackgroundClients(load, lambda: connect(port, fingerprint), (example,), ScenarioClock(),
                           cut_index=0) as background:
        time.sleep(0.4)
        before = server.served
        time.sleep(0.6)
    assert len(background.threads) == 3 and before == 0
    assert background.sent > 10 and server.served >= background.sent


def test_background_clients_wait_the_gaps_their_seed_gives():
    from itertools import islice

    from splitcomp.runtime.background import BackgroundClients
    from splitcomp.scenario.load import ClientsLoad

    def gaps(seed, client):
        load = ClientsLoad(clients=2, rate_hz=10.0, seed=seed)
        return list(islice(BackgroundClients(load, None, (), None, rate_hz=10.0).gaps(client), 50))

    assert gaps(3, 0) == gaps(3, 0) != gaps(4, 0)
    assert gaps(3, 0) != gaps(3, 1)
    assert 0.06 < sum(gaps(3, 0)) / 50 < 0.14  # mean 1 / rate_hz


def test_a_probe_answer_carries_the_servers_load(tiny, live_server, connect):
    """So that a device that stopped offloading learns when the load changes."""
    _, _, _, fingerprint = tiny
    _, port = live_server(load_model=BatchLoad(schedule=[[0, 16], [3600, 1]]))
    client = connect(port, fingerprint)
    client.send(client.probe_frame(1000))
    report = client.receive_probe_ack(timeout_s=5.0)
    assert report.batch_size == 16 and report.queue_len == 0 and report.slowdown == 1.0
