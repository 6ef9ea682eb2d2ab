import socket
import threading

import torch

from splitcomp.link.buffers import MMAP_FROM, PayloadPool
from splitcomp.link.wire import FrameReader, Kind, encode_frame


def test_released_payloads_are_received_into_again_and_values_stay_exact():
    pool = PayloadPool(max_bytes=4 * MMAP_FROM)
    a, b = socket.socketpair()
    reader = FrameReader(b, pool=pool)
    with a, b:
        for seed in range(3):
            tensor = torch.randint(0, 256, (MMAP_FROM + 7,), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(seed))
            data = encode_frame(Kind.REQUEST, {"cut": 0}, [tensor])
            sender = threading.Thread(target=a.sendall, args=(data,))
            sender.start()
            frame = reader.read()
            sender.join()
            assert torch.equal(frame.values()[0], tensor)
            frame.release()
    assert pool.reused == 2 and pool.idle_bytes == MMAP_FROM + 7


def test_the_pool_keeps_at_most_its_bound_and_never_a_buffer_twice_the_request():
    pool = PayloadPool(max_bytes=3 * MMAP_FROM)
    buffers = [pool.take(MMAP_FROM) for _ in range(4)]
    for buffer in buffers:
        pool.give(buffer)
    assert pool.idle_bytes == 3 * MMAP_FROM
    assert len(pool.take(MMAP_FROM // 2)) == MMAP_FROM // 2  # small: never from the pool
    assert pool.reused == 0
    big = pool.take(3 * MMAP_FROM)  # nothing idle fits: a new one of exactly that size
    assert len(big) == 3 * MMAP_FROM and pool.reused == 0
