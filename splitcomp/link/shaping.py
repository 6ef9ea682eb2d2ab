"""The device <-> edge server link: scenario clock, pacers and the user-space links.

A :class:`Link` (config group ``link/``) gives one :class:`Pacer` per direction. A pacer writes a
message on a socket so that it takes as long as the channel trace says it should:

* :class:`LoopbackLink` does not shape at all (plain ``sendall``, no delay).
* :class:`ShapedLink` paces in user space on the sending side: the message leaves in chunks, and
  a chunk is written once the trace, integrated from the start of the transfer, has carried every
  bit up to and including that chunk. Rate changes during a transfer are therefore followed, and
  outages (rate 0) are waited out up to ``max_transfer_s``.
* ``splitcomp.link.netns.TcLink`` shapes in the kernel between two network namespaces.

One-way delay is added in user space by every pacer: it sleeps ``delay_s`` before the first byte
and then shapes from that moment on, so a transfer of ``n`` bytes started at scenario time ``t``
takes ``delay_s + trace.transfer_time(n, t + delay_s)`` (:meth:`Pacer.expected_seconds`).

Deadline-aware give-up: a pacer given a :class:`GiveUp` rule abandons an upload (raising
:class:`UploadAbandoned`) as soon as the progress it has seen says the rest of the transfer would
take longer than the device needs to finish the request alone. :func:`pace` is the one
schedule of a shaped transfer (chunk times, deadline, give-up); the simulator follows it too.

Downlink: ``bind(uplink, None)`` gives the downlink the uplink's trace when the link's
``downlink`` key is ``same`` (the default) and leaves it unshaped (delay only) when it is
``unshaped``; a downlink trace passed explicitly always wins.
"""

from __future__ import annotations

import copy
import math
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from splitcomp.errors import ConfigError, PeerError
from splitcomp.scenario.trace import Trace

LOCALHOST = "127.0.0.1"
DOWNLINK_MODES = ("same", "unshaped")


class LinkTimeout(PeerError, TimeoutError):
    """A transfer that did not finish within ``max_transfer_s``; the socket is left mid-message,
    so the caller must close it (and may fall back, e.g. to device-only inference).
    ``carried_bytes`` is what the channel carried in the ``shaped_s`` seconds it had."""

    def __init__(self, message: str, carried_bytes: float = 0.0, shaped_s: float = 0.0) -> None:
        super().__init__(message)
        self.carried_bytes = float(carried_bytes)
        self.shaped_s = float(shaped_s)


class UploadAbandoned(LinkTimeout):
    """An upload given up by its :class:`GiveUp` rule before its deadline (the socket is left
    mid-message too)."""


DEFAULT_CHUNK_BYTES = 16384


@dataclass(frozen=True)
class GiveUp:
    """When to abandon an upload that turns out slower than expected.

    From ``after_s`` shaped seconds on (about the time the upload should take at the rate
    estimate the cut was chosen with), the upload is given up once even the rate seen so far at
    its most optimistic says the rest would take longer than ``device_rest_s``, the time the
    device needs to finish the request alone. With ``sent`` of ``nbytes`` through after ``t``
    shaped seconds and a chunk of ``pending`` bytes on its way, the channel carries less than
    ``(sent + pending) / t``, so the rest takes more than ``(nbytes - sent) * t / (sent + pending)``.
    """

    after_s: float
    device_rest_s: float

    def time_s(self, nbytes: int, sent: int, pending: int) -> float:
        """Shaped seconds into the transfer at which it is given up while ``sent`` bytes are
        through and ``pending`` more are on their way."""
        if sent >= nbytes:
            return math.inf
        return max(self.after_s, self.device_rest_s * (sent + pending) / (nbytes - sent))


@dataclass(frozen=True)
class Paced:
    """The schedule of one shaped transfer: ``dues[k]``: when chunk ``k`` has crossed; ``end_t``:
    when the last byte crossed, or when the transfer stopped (``stopped``: ``deadline`` or
    ``give_up``), with ``carried_bytes`` through by then."""

    dues: list[float]
    end_t: float
    carried_bytes: float
    stopped: str | None = None


def pace(trace: Trace, nbytes: int, shaped_from: float, deadline_t: float,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES, give_up: GiveUp | None = None) -> Paced:
    """The schedule of ``nbytes`` crossing ``trace`` in chunks from ``shaped_from``, stopped at
    ``deadline_t`` or by ``give_up`` (see :class:`GiveUp`)."""
    dues: list[float] = []
    due, sent = shaped_from, 0
    while sent < nbytes:
        piece = min(chunk_bytes, nbytes - sent)
        t_next = due + trace.transfer_time(piece, due, max_time=max(deadline_t - due, 0.0))
        t_give = shaped_from + give_up.time_s(nbytes, sent, piece) if give_up is not None else math.inf
        t_stop = min(t_give, deadline_t)
        if t_next > t_stop:
            partial = trace.bits_between(due, t_stop) / 8 if t_stop > due else 0.0
            return Paced(dues, t_stop, sent + min(float(piece), partial), "give_up" if t_give < deadline_t else "deadline")
        dues.append(t_next)
        due, sent = t_next, sent + piece
    return Paced(dues, due, float(nbytes))


class ScenarioClock:
    """Scenario time: seconds since ``origin`` (a ``time.time()`` epoch value, so that two
    processes given the same origin agree), advanced by the monotonic clock."""

    def __init__(self, origin: float | None = None) -> None:
        self.restart(origin)

    def restart(self, origin: float | None = None) -> None:
        """Scenario time 0 is now (or at wall time ``origin``): a new run replays the trace from
        its start, and a server told the new origin agrees."""
        wall, mono = time.time(), time.monotonic()
        self.origin: float = wall if origin is None else float(origin)
        # Anchor to the monotonic clock: later wall-clock steps do not move scenario time.
        self._mono_origin = mono - (wall - self.origin)

    def now(self) -> float:
        return time.monotonic() - self._mono_origin

    def __repr__(self) -> str:
        return f"ScenarioClock(origin={self.origin!r})"


def wait_until(now: Callable[[], float], t: float, spin_s: float = 0.001) -> None:
    """Wait until ``now() >= t``: sleep for the bulk, spin for the last ``spin_s`` seconds
    (``time.sleep`` overshoots by ~0.1 ms, which would add up over many chunks)."""
    left = t - now()
    if left > spin_s:
        time.sleep(left - spin_s)
    while now() < t:
        pass


def sleep_until(clock: ScenarioClock, t: float, spin_s: float = 0.001) -> None:
    """Wait until ``clock.now() >= t`` (see :func:`wait_until`)."""
    wait_until(clock.now, t, spin_s)


@dataclass
class TransferStats:
    """One message sent by a pacer. ``trace_rate_bps`` is the trace's mean rate over the shaped
    part of the transfer (bits the trace carried / trace time), NaN when the direction is unshaped."""

    nbytes: int
    start_t: float
    end_t: float
    seconds: float
    trace_rate_bps: float


class Pacer(ABC):
    """Sends one message at a time on a socket, shaped by ``trace`` (None: unshaped) after a
    one-way delay of ``delay_s``."""

    max_transfer_s = math.inf  # a transfer not done this long after it started raises LinkTimeout
    give_up: GiveUp | None = None  # deadline-aware abandonment (shaped pacers only)

    def __init__(self, trace: Trace | None, delay_s: float = 0.0) -> None:
        self.trace = trace
        self.delay_s = float(delay_s)

    @abstractmethod
    def send(self, sock: socket.socket, data: bytes | memoryview, clock: ScenarioClock) -> TransferStats:
        """Write all of ``data`` on ``sock``; returns once the shaping lets the last byte arrive."""

    def giving_up(self, rule: GiveUp | None) -> Pacer:
        """This pacer with the give-up rule ``rule`` (a copy; None: as it is)."""
        if rule is None:
            return self
        clone = copy.copy(self)
        clone.give_up = rule
        return clone

    def expected_seconds(self, nbytes: int, t: float) -> float:
        """Seconds the shaping makes a transfer of ``nbytes`` started at scenario time ``t`` take,
        one-way delay included (``inf`` if the trace never carries it)."""
        if self.trace is None:
            return self.delay_s
        return self.delay_s + self.trace.transfer_time(nbytes, t + self.delay_s)

    def _stats(self, nbytes: int, start_t: float, end_t: float) -> TransferStats:
        return TransferStats(
            nbytes, start_t, end_t, end_t - start_t, self._trace_rate(start_t + self.delay_s, end_t)
        )

    def _timeout(self, nbytes: int, start: float) -> LinkTimeout:
        """The error of a transfer of ``nbytes`` started at ``start`` and given up at its deadline."""
        shaped_from, deadline = start + self.delay_s, start + self.max_transfer_s
        carried = 0.0
        if self.trace is not None and deadline > shaped_from:
            carried = min(float(nbytes), self.trace.bits_between(shaped_from, deadline) / 8)
        name = self.trace.name if self.trace is not None else "unshaped"
        return LinkTimeout(
            f"a {nbytes}-byte transfer did not finish within max_transfer_s={self.max_transfer_s:g} s on "
            f"trace {name!r} (outage or too low a rate); raise link.max_transfer_s or let the runtime fall back",
            carried, max(0.0, deadline - shaped_from))

    def _trace_rate(self, t0: float, t1: float) -> float:
        if self.trace is None:
            return math.nan
        if t1 <= t0:
            return self.trace.rate_at(t0)
        return self.trace.bits_between(t0, t1) / (t1 - t0)


class UnshapedPacer(Pacer):
    """Plain ``sendall`` after the one-way delay."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(None, delay_s)

    def send(self, sock: socket.socket, data: bytes | memoryview, clock: ScenarioClock) -> TransferStats:
        start = clock.now()
        if self.delay_s > 0:
            sleep_until(clock, start + self.delay_s)
        sock.sendall(data)
        return self._stats(len(memoryview(data).cast("B")), start, clock.now())


class TracePacer(Pacer):
    """User-space shaping that follows ``trace`` during the transfer.

    Chunk ``k`` is written at the scenario time by which the trace, integrated from the end of the
    one-way delay, has carried all bytes up to and including chunk ``k``; the schedule is absolute,
    so sleep overshoot does not accumulate. A transfer that would end later than ``max_transfer_s``
    after its start waits until then (the sender cannot know the future either) and raises
    :class:`LinkTimeout`.
    """

    def __init__(
        self,
        trace: Trace,
        delay_s: float = 0.0,
        chunk_bytes: int = 16384,
        max_transfer_s: float = 30.0,
        spin_s: float = 0.001,
    ) -> None:
        super().__init__(trace, delay_s)
        self.chunk_bytes = int(chunk_bytes)
        self.max_transfer_s = float(max_transfer_s)
        self.spin_s = float(spin_s)

    def send(self, sock: socket.socket, data: bytes | memoryview, clock: ScenarioClock) -> TransferStats:
        view = memoryview(data).cast("B")
        start = clock.now()
        deadline = start + self.max_transfer_s
        shaped_from = start + self.delay_s  # bytes cross the shaped channel from then on
        sleep_until(clock, min(shaped_from, deadline), self.spin_s)
        schedule = pace(self.trace, len(view), shaped_from, deadline, self.chunk_bytes, self.give_up)
        for k, due in enumerate(schedule.dues):
            sleep_until(clock, due, self.spin_s)
            sock.sendall(view[k * self.chunk_bytes : (k + 1) * self.chunk_bytes])
        if schedule.stopped == "give_up":
            sleep_until(clock, schedule.end_t, self.spin_s)
            raise UploadAbandoned(
                f"gave up a {len(view)}-byte upload after {schedule.end_t - start:.3f} s: the device finishes sooner",
                schedule.carried_bytes, max(0.0, schedule.end_t - shaped_from))
        if schedule.stopped == "deadline":
            sleep_until(clock, deadline, self.spin_s)
            raise self._timeout(len(view), start)
        return self._stats(len(view), start, clock.now())


class Link(ABC):
    """The link between device and edge server, built from config group ``link/``.

    Constructor arguments are plain values, so the server process rebuilds the same link from the
    same config. Call :meth:`bind` with the channel traces before asking for pacers.
    """

    def __init__(self, delay_s: float = 0.0, downlink: str = "same") -> None:
        if not delay_s >= 0:
            raise ConfigError(f"link.delay_s must be a non-negative number of seconds, got {delay_s!r}")
        if downlink not in DOWNLINK_MODES:
            raise ConfigError(f"link.downlink must be one of {list(DOWNLINK_MODES)}, got {downlink!r}")
        self.one_way_delay_s = float(delay_s)
        self.downlink = downlink
        self.uplink_trace: Trace | None = None
        self.downlink_trace: Trace | None = None

    def bind(self, uplink: Trace | None, downlink: Trace | None = None) -> None:
        """Set the traces; a missing downlink follows the ``downlink`` key (see module doc)."""
        self.uplink_trace = uplink
        if downlink is None and self.downlink == "same":
            downlink = uplink
        self.downlink_trace = downlink

    @abstractmethod
    def uplink_pacer(self, max_transfer_s: float | None = None) -> Pacer:
        """Pacer for device -> server; ``max_transfer_s`` overrides the link's transfer deadline
        (a probe waits less than a request)."""

    @abstractmethod
    def downlink_pacer(self) -> Pacer:
        """Pacer for server -> device."""

    def setup(self, clock: ScenarioClock | None = None) -> None:
        """Prepare the link (idempotent). ``clock`` is the run's scenario clock, for links that
        shape in the background."""
        return None

    def teardown(self) -> None:
        """Undo :meth:`setup` (idempotent)."""
        return None

    def __enter__(self) -> Link:
        self.setup()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def server_command_prefix(self) -> list[str]:
        """Prefix for the command that launches the server process."""
        return []

    def server_bind_host(self) -> str:
        return LOCALHOST

    def server_connect_host(self) -> str:
        return LOCALHOST

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """Device-side TCP connection to the server (Nagle off: messages are written whole)."""
        return open_connection(host, port, timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(delay_s={self.one_way_delay_s:g}, downlink={self.downlink!r})"


def tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    """TCP connection with Nagle off (messages are written whole); raises ``OSError``."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_connection(host: str, port: int, timeout: float) -> socket.socket:
    """:func:`tcp_connect`; an unreachable server is a :class:`PeerError`."""
    try:
        return tcp_connect(host, port, timeout)
    except OSError as exc:
        raise PeerError(
            f"cannot connect to the edge server at {host}:{port} ({exc.strerror or exc}); "
            "check that the server is running and the host/port match"
        ) from None


class LoopbackLink(Link):
    """No shaping and no delay: the link is as fast as the host's loopback."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)

    def uplink_pacer(self, max_transfer_s: float | None = None) -> Pacer:
        return UnshapedPacer()

    def downlink_pacer(self) -> Pacer:
        return UnshapedPacer()


class ShapedLink(Link):
    """User-space shaping on the sending side (see :class:`TracePacer`) plus a one-way delay."""

    def __init__(
        self,
        delay_s: float = 0.0,
        chunk_bytes: int = 16384,
        max_transfer_s: float = 30.0,
        downlink: str = "same",
        spin_s: float = 0.001,
    ) -> None:
        super().__init__(delay_s, downlink)
        if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
            raise ConfigError(f"link.chunk_bytes must be a positive integer, got {chunk_bytes!r}")
        if not max_transfer_s > 0:
            raise ConfigError(f"link.max_transfer_s must be positive, got {max_transfer_s!r}")
        if not spin_s >= 0:
            raise ConfigError(f"link.spin_s must be non-negative, got {spin_s!r}")
        self.chunk_bytes = chunk_bytes
        self.max_transfer_s = float(max_transfer_s)
        self.spin_s = float(spin_s)

    def _pacer(self, trace: Trace | None, max_transfer_s: float | None = None) -> Pacer:
        if trace is None:
            return UnshapedPacer(self.one_way_delay_s)
        deadline = self.max_transfer_s if max_transfer_s is None else float(max_transfer_s)
        return TracePacer(trace, self.one_way_delay_s, self.chunk_bytes, deadline, self.spin_s)

    def uplink_pacer(self, max_transfer_s: float | None = None) -> Pacer:
        return self._pacer(self.uplink_trace, max_transfer_s)

    def downlink_pacer(self) -> Pacer:
        return self._pacer(self.downlink_trace)
