"""Kernel rate shaping: two network namespaces joined by a veth pair, shaped with tbf or htb.

:meth:`TcLink.setup` creates a device namespace ``sc-dev-<pid>-<n>`` and a server namespace
``sc-srv-<pid>-<n>`` joined by a veth pair with the addresses ``10.77.0.1`` (device) and
``10.77.0.2`` (server); each pair of namespaces is isolated, so concurrent runs do not clash. The
server process is launched with :meth:`TcLink.server_command_prefix` (``ip netns exec ...``); the
device side stays in the calling process, and :meth:`TcLink.connect` creates its socket inside the
device namespace from a short-lived thread that enters it with ``setns`` (a socket keeps the
namespace it was created in).

Egress of the device end shapes the uplink and egress of the server end the downlink. A
background thread sets the qdisc's rate to ``trace.rate_at(clock.now())`` at every trace step
(and at least every ``update_interval_s``). tc cannot be set to a rate of zero, so outages use
``outage_rate_bps`` (1 kbit/s by default: one full packet per ~12 s). The rate given to the
kernel is raised by the Ethernet/IP/TCP header share of a full packet, so the *payload* rate
equals the trace, as in :class:`~splitcomp.link.shaping.TracePacer`. netem is not assumed, so
the one-way delay is added in user space by the pacer, which also waits until the peer has
acknowledged the last byte, so a transfer ends when it has been delivered.

Only the process that calls :meth:`TcLink.setup` manages namespaces and rates; a server process
that rebuilds the link from the same config only needs its downlink pacer and bind host.
Linux and root (CAP_NET_ADMIN and CAP_SYS_ADMIN) are required.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import itertools
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from typing import TypeVar

from splitcomp.errors import ConfigError
from splitcomp.link.shaping import (
    Link,
    Pacer,
    ScenarioClock,
    TransferStats,
    open_connection,
    sleep_until,
)
from splitcomp.scenario.trace import Trace

log = logging.getLogger(__name__)

DEVICE_ADDR = "10.77.0.1"
SERVER_ADDR = "10.77.0.2"
PREFIX_LEN = 30
MTU = 1500
PACKET_BYTES = MTU + 14  # a full Ethernet frame: the smallest bucket that passes every packet
# bytes on the wire (Ethernet header + IP/TCP headers with timestamps) per byte of TCP payload
# in a full packet: the kernel counts the former, traces mean the latter.
WIRE_PER_PAYLOAD = PACKET_BYTES / (MTU - 52)
CLONE_NEWNET = 0x40000000
NOT_PERMITTED = (
    "link=tc needs root on Linux with the ip and tc tools (it creates network namespaces and "
    "qdiscs){detail}; use link=shaped for user-space shaping instead"
)

T = TypeVar("T")
_counter = itertools.count()


# --- environment ---------------------------------------------------------------------------
def is_root() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def check_permitted() -> None:
    """Raise the one-sentence :class:`ConfigError` when kernel shaping cannot work here."""
    if not is_root():
        raise ConfigError(NOT_PERMITTED.format(detail=""))
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(NOT_PERMITTED.format(detail=f" ({', '.join(missing)} not found)"))


def run_cmd(args: list[str]) -> None:
    """Run an ip/tc command; failure raises RuntimeError carrying its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")


def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def run_in_namespace(name: str, func: Callable[[], T]) -> T:
    """Call ``func`` in a fresh thread that has entered network namespace ``name``.

    ``setns`` changes only the calling thread, and the thread ends right after, so the rest of
    the process stays where it was; sockets made by ``func`` keep the namespace.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["value"] = func()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written on a TCP socket that the peer has not acknowledged yet (SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", raw)[0]


# --- qdiscs --------------------------------------------------------------------------------
def _bits(rate_bps: float) -> str:
    return f"{max(1, round(rate_bps))}bit"


def bucket_bytes(wire_rate_bps: float, burst_s: float) -> int:
    """Token bucket size: one full packet plus ``burst_s`` seconds of the rate, which absorbs the
    kernel timer's lateness at high rates while keeping the free burst of an idle link small."""
    return PACKET_BYTES + int(wire_rate_bps * burst_s / 8)


class TbfShaper:
    """A root token-bucket filter; rate changes use ``qdisc replace`` (the queue is kept)."""

    gso_max_segs = 65535  # tbf splits GSO packets larger than its bucket itself

    def __init__(self, netns: str, dev: str, limit_bytes: int) -> None:
        self.netns, self.dev, self.limit_bytes = netns, dev, limit_bytes

    def set_rate(self, rate_bps: float, burst_bytes: int) -> None:
        run_cmd(["tc", "-n", self.netns, "qdisc", "replace", "dev", self.dev, "root", "tbf",
                 "rate", _bits(rate_bps), "burst", str(burst_bytes), "limit", str(self.limit_bytes)])  # fmt: skip

    def remove(self) -> None:
        run_cmd(["tc", "-n", self.netns, "qdisc", "del", "dev", self.dev, "root"])


class HtbShaper:
    """One htb class (rate = ceil) over a byte fifo; rate changes use ``class replace``."""

    # htb charges a GSO super-packet (up to 64 KB) whole and lets a class run into debt, so the
    # end of a transfer would pass early; one packet per skb keeps it exact but caps the veth
    # at what the host can do per packet (~450 Mbit/s on a small VM).
    gso_max_segs = 1

    def __init__(self, netns: str, dev: str, limit_bytes: int) -> None:
        self.netns, self.dev, self.limit_bytes = netns, dev, limit_bytes
        self._added = False

    def set_rate(self, rate_bps: float, burst_bytes: int) -> None:
        tc = ["tc", "-n", self.netns]
        if not self._added:
            run_cmd([*tc, "qdisc", "add", "dev", self.dev, "root", "handle", "1:", "htb", "default", "1"])
        burst = str(burst_bytes)
        run_cmd([*tc, "class", "replace", "dev", self.dev, "parent", "1:", "classid", "1:1", "htb",
                 "rate", _bits(rate_bps), "ceil", _bits(rate_bps), "burst", burst, "cburst", burst,
                 "quantum", str(PACKET_BYTES)])  # fmt: skip
        if not self._added:
            run_cmd(
                [
                    *tc,
                    "qdisc",
                    "add",
                    "dev",
                    self.dev,
                    "parent",
                    "1:1",
                    "bfifo",
                    "limit",
                    str(self.limit_bytes),
                ]
            )
            self._added = True

    def remove(self) -> None:
        self._added = False
        run_cmd(["tc", "-n", self.netns, "qdisc", "del", "dev", self.dev, "root"])


QDISCS: dict[str, type[TbfShaper] | type[HtbShaper]] = {"tbf": TbfShaper, "htb": HtbShaper}


def next_step(trace: Trace, t: float) -> float:
    """Scenario time of the first rate step of ``trace`` after ``t``."""
    pos = t % trace.duration
    i = int(trace.times.searchsorted(pos, side="right"))
    end = trace.times[i] if i < len(trace.times) else trace.duration
    return t + (end - pos)


class _Direction:
    """One shaped veth end: applies the rate of whichever trace the link currently has bound."""

    def __init__(
        self,
        shaper: TbfShaper | HtbShaper,
        trace_of: Callable[[], Trace | None],
        outage_rate_bps: float,
        burst_s: float,
    ) -> None:
        self.shaper, self.trace_of = shaper, trace_of
        self.outage_rate_bps, self.burst_s = outage_rate_bps, burst_s
        self.rate_bps: float | None = None  # what the kernel has now; None: no qdisc

    def apply(self, t: float) -> float:
        """Set the rate for time ``t``; returns the next time the rate will step (inf: never)."""
        trace = self.trace_of()
        if trace is None:
            if self.rate_bps is not None:
                self.shaper.remove()
                self.rate_bps = None
            return float("inf")
        rate = max(trace.rate_at(t), self.outage_rate_bps) * WIRE_PER_PAYLOAD
        if rate != self.rate_bps:
            self.shaper.set_rate(rate, bucket_bytes(rate, self.burst_s))
            self.rate_bps = rate
        return next_step(trace, t)


class _RateUpdater(threading.Thread):
    """Follows the traces: re-applies the rates at every trace step, at least every ``interval_s``."""

    def __init__(self, directions: list[_Direction], clock: ScenarioClock, interval_s: float) -> None:
        super().__init__(name="tc-rate-updater", daemon=True)
        self.directions, self.clock, self.interval_s = directions, clock, interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = self.clock.now()
            wake = t + self.interval_s
            for direction in self.directions:
                try:
                    wake = min(wake, direction.apply(t))
                except RuntimeError as exc:  # keep following the trace; the next step may work
                    log.warning("tc rate update failed: %s", exc)
            # a hair after the step, so rate_at() reads the new sample
            self.stop_event.wait(max(0.0, wake + 1e-4 - self.clock.now()))


# --- pacer ---------------------------------------------------------------------------------
class KernelPacer(Pacer):
    """The kernel shapes; this adds the one-way delay, enforces ``max_transfer_s`` and returns
    once the peer has acknowledged the last byte (so the stats time the delivery).

    An idle token bucket is full and would let its first ``bucket_bytes`` pass at once; so that
    small transfers take as long as the trace says, the pacer holds the message back for as long
    as the trace needs to carry that head start, and the kernel shapes the rest.
    """

    def __init__(
        self,
        trace: Trace | None,
        delay_s: float,
        max_transfer_s: float,
        burst_s: float = 0.0,
        outage_rate_bps: float = 1000.0,
        poll_s: float = 0.0005,
    ) -> None:
        super().__init__(trace, delay_s)
        self.max_transfer_s = float(max_transfer_s)
        self.burst_s = float(burst_s)
        self.outage_rate_bps = float(outage_rate_bps)
        self.poll_s = float(poll_s)

    def send(self, sock: socket.socket, data: bytes | memoryview, clock: ScenarioClock) -> TransferStats:
        nbytes = len(memoryview(data).cast("B"))
        start = clock.now()
        deadline = start + self.max_transfer_s
        release = start + self.delay_s + self._head_start_s(nbytes, start + self.delay_s, deadline)
        if release > deadline:
            sleep_until(clock, deadline)
            raise self._timeout(nbytes, start)
        sleep_until(clock, release)
        previous_timeout = sock.gettimeout()
        try:
            sock.settimeout(max(deadline - clock.now(), 1e-3))  # bounds the whole sendall
            sock.sendall(data)
        except TimeoutError:
            raise self._timeout(nbytes, start) from None
        finally:
            sock.settimeout(previous_timeout)
        while unsent_bytes(sock) > 0:
            if clock.now() > deadline:
                raise self._timeout(nbytes, start)
            sleep_until(clock, clock.now() + self.poll_s, spin_s=0.0)
        return self._stats(nbytes, start, clock.now())

    def _head_start_s(self, nbytes: int, t: float, deadline: float) -> float:
        """Trace time to carry what a full bucket would let through for free at time ``t``."""
        if self.trace is None:
            return 0.0
        wire_rate = max(self.trace.rate_at(t), self.outage_rate_bps) * WIRE_PER_PAYLOAD
        head = min(nbytes, bucket_bytes(wire_rate, self.burst_s) / WIRE_PER_PAYLOAD)
        return self.trace.transfer_time(head, t, max_time=max(deadline - t, 0.0))


# --- link ----------------------------------------------------------------------------------
class TcLink(Link):
    """Kernel shaping (tbf or htb) between a device and a server network namespace."""

    def __init__(
        self,
        qdisc: str = "tbf",
        delay_s: float = 0.0,
        update_interval_s: float = 0.2,
        max_transfer_s: float = 30.0,
        downlink: str = "same",
        outage_rate_bps: float = 1000.0,
        burst_s: float = 1e-4,
        limit_bytes: int = 8 * 2**20,
    ) -> None:
        super().__init__(delay_s, downlink)
        if qdisc not in QDISCS:
            raise ConfigError(f"link.qdisc must be one of {sorted(QDISCS)}, got {qdisc!r}")
        if not update_interval_s > 0:
            raise ConfigError(f"link.update_interval_s must be positive, got {update_interval_s!r}")
        if not max_transfer_s > 0:
            raise ConfigError(f"link.max_transfer_s must be positive, got {max_transfer_s!r}")
        if not outage_rate_bps > 0:
            raise ConfigError(
                f"link.outage_rate_bps must be positive (tc has no zero rate), got {outage_rate_bps!r}"
            )
        if not burst_s >= 0:
            raise ConfigError(f"link.burst_s must be a non-negative number of seconds, got {burst_s!r}")
        if not (isinstance(limit_bytes, int) and limit_bytes >= 64 * PACKET_BYTES):
            raise ConfigError(
                f"link.limit_bytes must be an integer of at least {64 * PACKET_BYTES}, got {limit_bytes!r}"
            )
        self.qdisc = qdisc
        self.update_interval_s = float(update_interval_s)
        self.max_transfer_s = float(max_transfer_s)
        self.outage_rate_bps = float(outage_rate_bps)
        self.burst_s = float(burst_s)
        self.limit_bytes = limit_bytes
        self.device_netns: str | None = None
        self.server_netns: str | None = None
        self._updater: _RateUpdater | None = None

    # lifecycle
    def setup(self, clock: ScenarioClock | None = None) -> None:
        """Create the namespaces, veth pair and qdiscs and start following the traces."""
        if self.device_netns is not None:
            return
        check_permitted()
        tag = f"{os.getpid()}-{next(_counter)}"
        self.device_netns, self.server_netns = f"sc-dev-{tag}", f"sc-srv-{tag}"
        atexit.register(self.teardown)
        try:
            self._create(f"scd{tag}", f"scs{tag}", clock or ScenarioClock())
        except (RuntimeError, OSError) as exc:
            self.teardown()
            raise ConfigError(
                NOT_PERMITTED.format(detail=f" (setting up the namespaces failed: {exc})")
            ) from None

    def _create(self, dev_if: str, srv_if: str, clock: ScenarioClock) -> None:
        dev_ns, srv_ns = self.device_netns, self.server_netns
        assert dev_ns is not None and srv_ns is not None
        run_cmd(["ip", "netns", "add", dev_ns])
        run_cmd(["ip", "netns", "add", srv_ns])
        run_cmd(
            [
                "ip",
                "link",
                "add",
                dev_if,
                "netns",
                dev_ns,
                "type",
                "veth",
                "peer",
                "name",
                srv_if,
                "netns",
                srv_ns,
            ]
        )
        shaper = QDISCS[self.qdisc]
        for ns, dev, addr in ((dev_ns, dev_if, DEVICE_ADDR), (srv_ns, srv_if, SERVER_ADDR)):
            run_cmd(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
            run_cmd(["ip", "-n", ns, "link", "set", dev, "gso_max_segs", str(shaper.gso_max_segs)])
            run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
            run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        rest = (self.outage_rate_bps, self.burst_s)
        directions = [
            _Direction(shaper(dev_ns, dev_if, self.limit_bytes), lambda: self.uplink_trace, *rest),
            _Direction(shaper(srv_ns, srv_if, self.limit_bytes), lambda: self.downlink_trace, *rest),
        ]
        for direction in directions:  # shaped before the first byte, not a tick later
            direction.apply(clock.now())
        self._updater = _RateUpdater(directions, clock, self.update_interval_s)
        self._updater.start()

    def teardown(self) -> None:
        """Stop following the traces and delete the namespaces (with them the veth pair)."""
        if self._updater is not None:
            self._updater.stop_event.set()
            self._updater.join()
            self._updater = None
        for name in (self.device_netns, self.server_netns):
            if name is not None and name in list_namespaces():
                try:
                    run_cmd(["ip", "netns", "del", name])
                except RuntimeError as exc:
                    log.warning("could not delete network namespace: %s", exc)
        self.device_netns = self.server_netns = None
        atexit.unregister(self.teardown)

    # pacers and endpoints
    def _pacer(self, trace: Trace | None, max_transfer_s: float | None = None) -> Pacer:
        deadline = self.max_transfer_s if max_transfer_s is None else float(max_transfer_s)
        return KernelPacer(trace, self.one_way_delay_s, deadline, self.burst_s, self.outage_rate_bps)

    def uplink_pacer(self, max_transfer_s: float | None = None) -> Pacer:
        return self._pacer(self.uplink_trace, max_transfer_s)

    def downlink_pacer(self) -> Pacer:
        return self._pacer(self.downlink_trace)

    def server_command_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self._require(self.server_netns)]

    def server_bind_host(self) -> str:
        return SERVER_ADDR

    def server_connect_host(self) -> str:
        return SERVER_ADDR

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """TCP connection made inside the device namespace."""
        return run_in_namespace(
            self._require(self.device_netns), lambda: open_connection(host, port, timeout)
        )

    def _require(self, name: str | None) -> str:
        if name is None:
            raise ConfigError(
                "the tc link is not set up; call link.setup() (or use it as a context manager) first"
            )
        return name

    def __repr__(self) -> str:
        return f"TcLink(qdisc={self.qdisc!r}, delay_s={self.one_way_delay_s:g}, downlink={self.downlink!r})"
