"""A server-wide budget of bytes held for frames in flight, shared by every connection."""

from __future__ import annotations

import threading
import time


class ByteBudget:
    """Bytes a receiver may hold at once for frames being read, decoded or answered.

    A reader reserves a frame's share once its header is validated and before the payload
    buffer exists; the reservation is returned when the frame has been answered. A frame that
    cannot get its share in time is refused, so many peers together cannot exhaust memory."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError("a byte budget must be positive")
        self.total_bytes = int(total_bytes)
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self, nbytes: int, timeout_s: float) -> bool:
        """Reserve ``nbytes``, waiting up to ``timeout_s`` for others to return theirs."""
        if nbytes > self.total_bytes:
            return False
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while self._in_use + nbytes > self.total_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self._in_use += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._changed:
            self._in_use -= nbytes
            self._changed.notify_all()
