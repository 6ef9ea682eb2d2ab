"""Kernel shaping across two network namespaces (runs only as root where ``ip netns`` works)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import numpy as np
import pytest

from splitcomp.errors import ConfigError
from splitcomp.link import netns, sink
from splitcomp.link.netns import TcLink, list_namespaces
from splitcomp.link.shaping import ScenarioClock
from splitcomp.scenario.trace import Trace


def tc_unavailable() -> str | None:
    """Why kernel shaping cannot be tested here, or None."""
    if not netns.is_root():
        return "needs root on Linux"
    try:
        netns.check_permitted()
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True)
    except (ConfigError, subprocess.CalledProcessError) as exc:
        return f"ip netns does not work here ({exc})"
    return None


needs_tc = pytest.mark.skipif(tc_unavailable() is not None, reason=str(tc_unavailable()))


def steps(times: list[float], rates: list[float]) -> Trace:
    return Trace(np.array(times), np.array(rates), 3600.0, name="steps")


def timed_transfers(link: TcLink, clock: ScenarioClock, sizes: list[int]) -> list[tuple[float, float, bool]]:
    """Send one message per size from the device namespace to a sink in the server namespace;
    returns (seconds to the last byte, expected seconds, intact) per message."""
    pacer, results = link.uplink_pacer(), []
    with sink.connected_sink(link) as sock:
        for size in sizes:
            payload = os.urandom(size)
            framed = sink.message(payload)
            start_mono, start_t = time.monotonic(), clock.now()
            expected = pacer.expected_seconds(len(framed), start_t)
            pacer.send(sock, framed, clock)
            last_byte_t, digest = sink.read_reply(sock)
            results.append((last_byte_t - start_mono, expected, digest == hashlib.sha256(payload).digest()))
    return results


def assert_close(measured: float, expected: float, tolerance: float = 0.3, slack_s: float = 0.05) -> None:
    """Never faster than the trace allows; later only by scheduling delays on a busy machine."""
    assert (1 - tolerance) * expected <= measured <= (1 + tolerance) * expected + slack_s, (
        f"took {measured:.3f} s, expected {expected:.3f} s"
    )


@needs_tc
@pytest.mark.parametrize("qdisc", ["tbf", "htb"])
def test_kernel_shaped_transfer_takes_trace_time_and_teardown_cleans_up(qdisc):
    link = TcLink(qdisc=qdisc, delay_s=0.01)
    link.bind(steps([0.0], [20e6]))
    clock = ScenarioClock()
    with link:
        link.setup(clock)  # idempotent: already set up by the context manager
        names = [link.device_netns, link.server_netns]
        assert set(names) <= set(list_namespaces())
        (small, small_expected, small_intact), (took, expected, intact) = timed_transfers(
            link, clock, [16_384, 500_000]
        )
    assert intact and small_intact
    assert expected == pytest.approx(0.01 + 500_008 * 8 / 20e6)
    assert_close(took, expected)
    assert_close(small, small_expected)
    assert not set(names) & set(list_namespaces())
    link.teardown()  # idempotent


@needs_tc
def test_kernel_rate_follows_a_step_and_an_outage():
    # setup takes ~0.2 s; the transfer starts in the 0-rate second and meets the step at 1.5 s
    link = TcLink(delay_s=0.0)
    link.bind(steps([0.0, 1.0, 1.5], [20e6, 0.0, 4e6]))
    clock = ScenarioClock()
    link.setup(clock)
    try:
        time.sleep(max(0.0, 1.1 - clock.now()))
        ((took, expected, intact),) = timed_transfers(link, clock, [300_000])
    finally:
        link.teardown()
    assert intact
    assert expected > 300_000 * 8 / 4e6 + 0.1  # waits out the rest of the outage, then 4 Mbit/s
    assert_close(took, expected)


def test_no_root_gives_one_sentence_suggesting_shaped(monkeypatch):
    monkeypatch.setattr(netns, "is_root", lambda: False)
    link = TcLink()
    with pytest.raises(ConfigError) as info:
        link.setup()
    message = str(info.value)
    assert "root" in message and "link=shaped" in message and "\n" not in message
    assert link.device_netns is None


def test_missing_tools_name_the_tool(monkeypatch):
    monkeypatch.setattr(netns, "is_root", lambda: True)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(ConfigError, match=r"\(tc not found\).*link=shaped"):
        TcLink().setup()


def test_endpoints_need_setup_and_bad_values_are_config_errors():
    link = TcLink()
    assert link.server_bind_host() == link.server_connect_host() == netns.SERVER_ADDR
    with pytest.raises(ConfigError, match="setup"):
        link.server_command_prefix()
    with pytest.raises(ConfigError, match="link.qdisc"):
        TcLink(qdisc="netem")
    with pytest.raises(ConfigError, match="link.outage_rate_bps"):
        TcLink(outage_rate_bps=0.0)


def test_next_step_and_bucket_size():
    trace = steps([0.0, 1.0, 2.5], [1e6, 2e6, 3e6])
    assert netns.next_step(trace, 0.2) == pytest.approx(1.0)
    assert netns.next_step(trace, 1.0) == pytest.approx(2.5)
    assert netns.next_step(trace, 3601.2) == pytest.approx(3602.5)  # past the end: loops
    assert netns.bucket_bytes(1e6, 1e-4) == netns.PACKET_BYTES + 12
    assert netns.bucket_bytes(500e6, 0.0) == netns.PACKET_BYTES
