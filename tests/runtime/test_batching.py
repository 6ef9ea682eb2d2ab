"""The batching edge server: requests of one cut from several devices run in one tail call."""

import threading
import time

import torch

from splitcomp.link.codecs import RawCodec
from splitcomp.runtime.batching import BatchQueue, Job
from splitcomp.runtime.server import ServerSettings


def _send(client, plan, cut, x, request_id=0):
    head, _ = plan.split(cut)
    with torch.inference_mode():
        values = tuple(head(x))
    return client.exchange(client.request_frame(request_id, cut.index, values, RawCodec()))


def _concurrently(*calls):
    """Run the calls at once in threads; their results in order."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_two_devices_share_one_batch_and_both_answers_are_exact(tiny, live_server, connect):
    model, _, plan, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=5.0, batching=True, max_wait_s=1.0))
    first, second = connect(port, fingerprint), connect(port, fingerprint)
    cut = next(c for c in plan.cuts[:-1] if not c.single_tensor)  # two tensors cross: both concatenated
    xs = [torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
          for s in (1, 2)]
    replies = _concurrently(lambda: _send(first, plan, cut, xs[0], 10), lambda: _send(second, plan, cut, xs[1], 20))
    head, tail = plan.split(cut)
    with torch.inference_mode():
        heads = [tuple(head(x)) for x in xs]  # what each device sends
        together = tail(tuple(torch.cat(parts) for parts in zip(*heads)))  # one tail call on both
        unsplit = model(torch.cat(xs))
    assert [r.request for r in replies] == [10, 20]
    for reply, expected, reference in zip(replies, together, unsplit):
        assert reply.report.batch_requests == 2 and reply.report.batch_size == 2
        assert torch.equal(reply.logits, expected.unsqueeze(0))  # bit for bit, each device its own row
        assert torch.allclose(reply.logits, reference.unsqueeze(0), atol=1e-5)
        assert reply.logits.argmax() == reference.argmax()
    assert len(server.history) == 1 and server.history[0].requests == 2


def test_a_lone_request_waits_max_wait_s_and_a_full_batch_does_not(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    cut = plan.cuts[0]
    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, batching=True, max_wait_s=0.3))
    client = connect(port, fingerprint)
    t0 = time.perf_counter()
    reply = _send(client, plan, cut, example)
    assert reply.report.batch_requests == 1 and 0.3 <= reply.report.queue_s < 0.3 + 1.0
    assert time.perf_counter() - t0 >= 0.3

    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, batching=True, max_wait_s=30.0, max_batch=2))
    first, second = connect(port, fingerprint), connect(port, fingerprint)
    replies = _concurrently(lambda: _send(first, plan, cut, example), lambda: _send(second, plan, cut, example))
    assert all(r.report.batch_requests == 2 and r.report.queue_s < 5.0 for r in replies)  # closed when full


def test_batching_off_runs_one_request_per_tail_call(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    server, port = live_server()
    first, second = connect(port, fingerprint), connect(port, fingerprint)
    replies = _concurrently(lambda: _send(first, plan, plan.cuts[0], example),
                            lambda: _send(second, plan, plan.cuts[0], example))
    assert all(r.report.batch_requests == 1 for r in replies) and len(server.history) == 2


def _job(cut, rows=1, enqueued=0.0):
    return Job(cut, (torch.zeros(rows, 2),), 0.0, enqueued, 0, rows=rows)


def test_cuts_are_served_round_robin_and_batches_stop_at_max_batch():
    queue = BatchQueue(max_batch=3, max_wait_s=0.0)
    for _ in range(7):
        queue.put(_job(0))
    queue.put(_job(1))
    taken = [queue.take() for _ in range(3)]
    assert [(b[0].cut_index, len(b)) for b in taken] == [(0, 3), (1, 1), (0, 3)]
    assert queue.qsize() == 1
    queue.close()
    assert len(queue.take()) == 1 and queue.take() is None


def test_a_request_carrying_more_rows_than_room_left_starts_the_next_batch():
    queue = BatchQueue(max_batch=4, max_wait_s=0.0)
    for rows in (3, 2, 2):
        queue.put(_job(0, rows))
    assert [job.rows for job in queue.take()] == [3]
    assert [job.rows for job in queue.take()] == [2, 2]


def test_the_server_config_turns_batching_on_and_refuses_a_non_boolean():
    import pytest
    from omegaconf import OmegaConf

    from splitcomp.build import server_settings
    from splitcomp.configs import config_dir
    from splitcomp.errors import ConfigError

    cfg = OmegaConf.load(config_dir() / "server" / "default.yaml")
    assert server_settings(cfg).batching is False  # off by default: the one-at-a-time server
    cfg.batching, cfg.max_wait_s = True, 0.01
    settings = server_settings(cfg)
    assert settings.batching and settings.max_wait_s == 0.01
    cfg.batching = "sometimes"
    with pytest.raises(ConfigError, match="server.batching must be on or off"):
        server_settings(cfg)
