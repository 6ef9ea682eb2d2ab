"""Background device clients: real requests from other devices, so server load is real contention."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from splitcomp.errors import PeerError
from splitcomp.link.codecs import RawCodec

log = logging.getLogger("splitcomp")


class BackgroundClients:
    """``load_model.clients_at(t)`` threads, each a device sending full-offload requests in a
    closed loop over its own connection; thread i is active while i < clients_at(now)."""

    def __init__(self, load_model: Any, connect: Callable[[], Any], values: tuple[Any, ...], clock: Any,
                 cut_index: int = 0, rate_hz: float | None = None) -> None:
        self.load_model = load_model
        self.connect = connect
        self.values = values  # what crosses the background clients' cut (their head ran once)
        self.clock = clock
        self.cut_index = cut_index
        self.rate_hz = rate_hz
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sent = 0
        self.errors = 0

    def max_clients(self) -> int:
        schedule = getattr(self.load_model, "max_clients", None)
        return int(schedule() if callable(schedule) else self.load_model.clients_at(0.0))

    def start(self) -> BackgroundClients:
        for i in range(self.max_clients()):
            thread = threading.Thread(target=self._loop, args=(i,), name=f"bg-client-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def _loop(self, i: int) -> None:
        client = None
        while not self.stop_event.is_set():
            if i >= self.load_model.clients_at(self.clock.now()):
                self.stop_event.wait(0.05)
                continue
            try:
                client = client if client is not None and client.connected else self.connect()
                frame = client.request_frame(-1 - i, self.cut_index, self.values, RawCodec())
                client.exchange(frame)
                self.sent += 1
            except PeerError as exc:
                self.errors += 1
                log.debug("background client %d: %s", i, exc)
                client = None
                self.stop_event.wait(0.2)
            if self.rate_hz:  # open loop: Poisson gaps
                self.stop_event.wait(random.expovariate(self.rate_hz))
        if client is not None:
            client.close()

    def __enter__(self) -> BackgroundClients:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
