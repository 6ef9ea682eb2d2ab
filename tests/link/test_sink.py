import hashlib
import os
import time

from splitcomp.link import sink
from splitcomp.link.shaping import LoopbackLink


def test_sink_answers_each_message_with_its_arrival_time_and_digest() -> None:
    payloads = [b"", os.urandom(10), os.urandom(3 << 20)]
    with sink.connected_sink(LoopbackLink()) as sock:
        for payload in payloads:
            sent = time.monotonic()
            sock.sendall(sink.message(payload))
            last_byte_t, digest = sink.read_reply(sock)
            assert sent <= last_byte_t <= time.monotonic()  # same host: one monotonic clock
            assert digest == hashlib.sha256(payload).digest()
