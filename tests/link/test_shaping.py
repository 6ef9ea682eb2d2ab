"""User-space shaping: real TCP transfers over loopback take the time the trace says."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splitcomp.errors import ConfigError, PeerError
from splitcomp.link.shaping import (
    LinkTimeout,
    LoopbackLink,
    ScenarioClock,
    ShapedLink,
    TracePacer,
    UnshapedPacer,
)
from splitcomp.scenario.trace import Trace

CONF = Path(__file__).resolve().parents[2] / "conf" / "link"
# Timed assertions. A link must never deliver faster than its trace allows (tight lower bound);
# a busy machine can only make it later, so the upper bound has room for scheduling delays.
TOLERANCE = 0.3
SCHEDULING_SLACK_S = 0.05


def constant(rate_bps: float) -> Trace:
    return Trace(np.array([0.0]), np.array([rate_bps]), 3600.0, name="constant")


def steps(times: list[float], rates: list[float]) -> Trace:
    return Trace(np.array(times), np.array(rates), 3600.0, name="steps")


class Receiver:
    """The far end of a loopback TCP connection: reads ``nbytes`` in a thread and notes when the
    last byte arrived (monotonic clock)."""

    def __init__(self, conn: socket.socket, nbytes: int) -> None:
        self.conn, self.nbytes = conn, nbytes
        self.data = bytearray()
        self.last_byte_t = float("nan")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while len(self.data) < self.nbytes:
            chunk = self.conn.recv(1 << 20)
            if not chunk:
                return
            self.data += chunk
        self.last_byte_t = time.monotonic()

    def join(self) -> bytes:
        self.thread.join(timeout=30)
        return bytes(self.data)


@pytest.fixture()
def tcp_pair():
    """(client, server) ends of one loopback TCP connection made through a link's connect()."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = LoopbackLink().connect("127.0.0.1", listener.getsockname()[1], timeout=5.0)
    server, _ = listener.accept()
    yield client, server
    for sock in (client, server, listener):
        sock.close()


def timed_send(pacer, client, server, nbytes: int, clock: ScenarioClock):
    """Send random bytes; returns (seconds until the receiver had the last byte, expected seconds,
    stats, whether the bytes arrived intact)."""
    data = os.urandom(nbytes)
    receiver = Receiver(server, nbytes)
    start_mono, start_t = time.monotonic(), clock.now()
    expected = pacer.expected_seconds(nbytes, start_t)
    stats = pacer.send(client, data, clock)
    received = receiver.join()
    return receiver.last_byte_t - start_mono, expected, stats, received == data


def assert_close(measured: float, expected: float) -> None:
    assert (1 - TOLERANCE) * expected <= measured <= (1 + TOLERANCE) * expected + SCHEDULING_SLACK_S, (
        f"took {measured:.3f} s, expected {expected:.3f} s"
    )


def test_scenario_clock_shares_its_origin():
    first = ScenarioClock()
    time.sleep(0.01)
    second = ScenarioClock(origin=first.origin)
    assert abs(first.now() - second.now()) < 1e-3
    assert 0.01 <= first.now() < 1.0
    assert ScenarioClock().now() < 0.01


def test_paced_transfer_takes_trace_time_plus_delay(tcp_pair):
    client, server = tcp_pair
    pacer = TracePacer(constant(8e6), delay_s=0.02)
    took, expected, stats, intact = timed_send(pacer, client, server, 200_000, ScenarioClock())
    assert expected == pytest.approx(0.02 + 200_000 * 8 / 8e6)
    assert intact
    assert_close(took, expected)
    assert_close(stats.seconds, expected)
    assert stats.nbytes == 200_000 and stats.end_t - stats.start_t == pytest.approx(stats.seconds)
    assert stats.trace_rate_bps == pytest.approx(8e6)


def test_rate_step_during_a_transfer_is_followed(tcp_pair):
    client, server = tcp_pair
    # 4 Mbit/s for 0.1 s, then 16 Mbit/s: 50 kB + 150 kB -> 0.175 s (0.4 s at 4, 0.1 s at 16 Mbit/s)
    clock = ScenarioClock()
    pacer = TracePacer(steps([0.0, 0.1], [4e6, 16e6]))
    took, expected, stats, intact = timed_send(pacer, client, server, 200_000, clock)
    assert intact
    assert 0.16 < expected < 0.18
    assert_close(took, expected)
    assert 4e6 < stats.trace_rate_bps < 16e6


def test_outage_is_waited_out(tcp_pair):
    client, server = tcp_pair
    pacer = TracePacer(steps([0.0, 0.15], [0.0, 8e6]))
    took, expected, stats, intact = timed_send(pacer, client, server, 40_000, ScenarioClock())
    assert intact
    assert 0.18 < expected < 0.2
    assert_close(took, expected)


def test_transfer_longer_than_max_transfer_raises(tcp_pair):
    client, _ = tcp_pair
    pacer = TracePacer(steps([0.0, 5.0], [0.0, 8e6]), max_transfer_s=0.1)
    clock = ScenarioClock()
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match="max_transfer_s") as info:
        pacer.send(client, b"x" * 10_000, clock)
    assert 0.09 <= time.monotonic() - start < 0.5  # waited for the deadline, not forever
    assert isinstance(info.value, PeerError) and isinstance(info.value, TimeoutError)


def test_unshaped_pacer_only_delays(tcp_pair):
    client, server = tcp_pair
    took, expected, stats, intact = timed_send(UnshapedPacer(0.05), client, server, 100_000, ScenarioClock())
    assert intact and expected == 0.05
    assert_close(took, expected)
    assert np.isnan(stats.trace_rate_bps)


def test_expected_seconds_integrates_the_trace():
    trace = steps([0.0, 1.0], [1e6, 3e6])
    pacer = TracePacer(trace, delay_s=0.5)
    # starts shaping at 0.5: 0.5 s at 1 Mbit/s (62.5 kB), the other 62.5 kB at 3 Mbit/s
    assert pacer.expected_seconds(125_000, 0.0) == pytest.approx(0.5 + 0.5 + 0.5 / 3)
    assert LoopbackLink().uplink_pacer().expected_seconds(10**9, 0.0) == 0.0


def test_bind_gives_the_downlink_the_uplink_trace_or_none():
    up, down = constant(1e6), constant(5e6)
    same = ShapedLink(delay_s=0.01)
    same.bind(up)
    assert same.downlink_trace is up and same.downlink_pacer().trace is up
    unshaped = ShapedLink(delay_s=0.01, downlink="unshaped")
    unshaped.bind(up)
    assert unshaped.downlink_trace is None
    assert unshaped.downlink_pacer().expected_seconds(10**6, 0.0) == 0.01
    unshaped.bind(up, down)
    assert unshaped.downlink_pacer().trace is down and unshaped.uplink_pacer().trace is up


@pytest.mark.parametrize(
    "kwargs",
    [{"downlink": "both"}, {"delay_s": -1.0}, {"chunk_bytes": 0}, {"max_transfer_s": 0.0}, {"spin_s": -0.1}],
)
def test_bad_config_values_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="link\\."):
        ShapedLink(**kwargs)


def test_connect_to_nothing_is_a_peer_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(PeerError, match=f"127.0.0.1:{port}"):
        ShapedLink().connect("127.0.0.1", port, timeout=1.0)


@pytest.mark.parametrize("option", ["loopback", "shaped", "tc"])
def test_config_group_instantiates_and_keeps_the_interface(option):
    link = instantiate(OmegaConf.load(CONF / f"{option}.yaml"))
    link.bind(constant(2e6))
    assert link.uplink_pacer().expected_seconds(0, 0.0) == link.one_way_delay_s
    assert isinstance(link.server_bind_host(), str) and isinstance(link.server_connect_host(), str)


def test_loopback_link_is_a_plain_connection(tcp_pair):
    client, server = tcp_pair
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    link = LoopbackLink()
    with link:
        assert link.server_command_prefix() == []
        took, expected, stats, intact = timed_send(
            link.uplink_pacer(), client, server, 1_000_000, ScenarioClock()
        )
    assert intact and expected == 0.0 and took < 1.0
