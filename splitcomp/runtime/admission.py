"""Connection slots: how many peers the server holds at once, in all and per address."""

from __future__ import annotations

import threading
import time
from collections import Counter


class ConnectionSlots:
    """A slot is taken when a connection is accepted (before any byte is read) and given back
    when it closes, so a flood of connections is refused at the door, not after a thread started.
    The per-address cap keeps one address from taking every slot."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        if max_total < 1 or max_per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._by_address: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self._by_address.values())

    def take(self, address: str) -> str | None:
        """Take a slot for a peer at ``address``; None when taken, else why it was refused."""
        with self._lock:
            if sum(self._by_address.values()) >= self.max_total:
                return f"the server already holds {self.max_total} connections (server.max_clients)"
            if self._by_address[address] >= self.max_per_address:
                return (f"{address} already holds {self.max_per_address} connections "
                        "(server.max_clients_per_address)")
            self._by_address[address] += 1
            return None

    def give_back(self, address: str) -> None:
        with self._lock:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]


class Throttle:
    """Says yes at most once per ``interval_s`` per key: one warning per kind of trouble, not one
    per hostile connection (a flood must not flood the log too)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -float("inf")) < self.interval_s:
                return False
            self._last[key] = now
            return True
