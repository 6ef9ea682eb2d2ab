"""Background device clients: real requests from other devices, so server load is real contention."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from splitcomp.errors import PeerError
from splitcomp.link.codecs import RawCodec
from splitcomp.link.shaping import ScenarioClock
from splitcomp.scenario.load import LoadModel

log = logging.getLogger("splitcomp")


class BackgroundClients:
    """Background devices, each a thread sending requests at the load model's cut over its own
    connection, waiting for every answer; thread i is active while i < ``clients_at(now)``, so
    the count follows the schedule (one thread per client at the schedule's peak). With
    ``rate_hz`` a client waits an exponential gap of mean ``1 / rate_hz`` after each answer,
    drawn from a generator seeded by ``seed`` and its number; without, it sends again at once."""

    def __init__(self, load_model: LoadModel, connect: Callable[[], Any], values: tuple[Any, ...], clock: ScenarioClock,
                 cut_index: int = 0, rate_hz: float | None = None, seed: int | None = None) -> None:
        self.load_model = load_model
        self.connect = connect
        self.values = values  # what crosses the background clients' cut (their head ran once)
        self.clock = clock
        self.cut_index = cut_index
        self.rate_hz = rate_hz
        self.seed = int(getattr(load_model, "seed", 0) if seed is None else seed)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sent = 0
        self.errors = 0

    def max_clients(self) -> int:
        """Threads to start: the most clients the load model ever asks for."""
        return int(self.load_model.max_clients())

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

    def gaps(self, i: int) -> Iterator[float]:
        """Client ``i``'s waits after each answer: exponential with mean ``1 / rate_hz`` (0 in a
        closed loop), the same for the same seed."""
        rng = np.random.default_rng([self.seed, i])
        while True:
            yield float(rng.exponential(1.0 / self.rate_hz)) if self.rate_hz else 0.0

    def _loop(self, i: int) -> None:
        gaps = self.gaps(i)
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
            gap = next(gaps)
            if gap > 0:
                self.stop_event.wait(gap)
        if client is not None:
            client.close()

    def __enter__(self) -> BackgroundClients:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
