"""Payload buffers a receiver fills from the socket, and a bounded pool that recycles them.

A fresh anonymous mapping costs one page fault per 4 KiB page as bytes arrive: for a 16 MiB frame
that takes about as long as the transfer itself on loopback. A receiver that reads many large frames
(the edge server of a fleet) gives each released payload back to a :class:`PayloadPool` and
receives the next one into it. The pool holds at most ``max_bytes`` while idle, in all, whatever
the number of connections, so it does not loosen the server's memory bound by more than that.

A buffer may be recycled only once nothing views it any more: the tensors of a frame are views
of its payload, so the owner releases a frame only when its values are done with.
"""

from __future__ import annotations

import mmap
import threading

MMAP_FROM = 1 << 20  # payloads from this size get their own mapping
Buffer = bytearray | mmap.mmap


def new_buffer(nbytes: int) -> Buffer:
    """A writable buffer of ``nbytes``: small ones on the heap, large ones their own anonymous
    mapping, whose pages the kernel provides only as bytes are written into them (a peer that
    declares a large frame and trickles it makes the receiver hold only what it sent)."""
    return mmap.mmap(-1, nbytes) if nbytes >= MMAP_FROM else bytearray(nbytes)


class PayloadPool:
    """Idle payload buffers of at least ``MMAP_FROM`` bytes, ``max_bytes`` of them at most; a
    request takes the smallest idle buffer that fits without wasting more than half of it."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self._idle: list[Buffer] = []
        self._lock = threading.Lock()
        self.reused = 0

    @property
    def idle_bytes(self) -> int:
        return sum(len(buf) for buf in self._idle)

    def take(self, nbytes: int) -> Buffer:
        """A buffer of at least ``nbytes`` (an idle one, or a new one of exactly that size)."""
        if nbytes >= MMAP_FROM:
            with self._lock:
                fits = [buf for buf in self._idle if nbytes <= len(buf) <= 2 * nbytes]
                if fits:
                    best = min(fits, key=len)
                    self._idle.remove(best)
                    self.reused += 1
                    return best
        return new_buffer(nbytes)

    def give(self, buffer: Buffer) -> None:
        """Keep ``buffer`` for a later frame if there is room; otherwise let it go."""
        if len(buffer) < MMAP_FROM:
            return
        with self._lock:
            if self.idle_bytes + len(buffer) <= self.max_bytes:
                self._idle.append(buffer)
