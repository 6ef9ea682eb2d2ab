"""Link benchmark: does a shaped transfer take size/rate + delay, and how fast is the bare loopback?

For every transfer size and constant rate, each link (user-space ``shaped``; kernel ``tc`` with
tbf and htb when root is available) sends messages over TCP to a sink process (for tc, inside the
server namespace). The sink notes when the last byte arrived; the figure is

    ratio = (last byte received - send called) / (size / rate + delay)

where size/rate integrates the trace exactly as ``Pacer.expected_seconds`` does. Second part: the
unshaped loopback throughput of a plain socket and of the frame path (encode_frame + send +
read_frame + decode) as a share of a plain memory copy of the same bytes.

    python experiments/bench_link.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from splitcomp.errors import SplitcompError
from splitcomp.link import netns, sink
from splitcomp.link.shaping import Link, ScenarioClock, ShapedLink
from splitcomp.scenario.trace import Trace

SIZES = [16 * 1024, 64 * 1024, 256 * 1024, 1 << 20, 4 << 20]
RATES_BPS = [1e6, 10e6, 50e6, 100e6, 500e6]
TARGET_LOW, TARGET_HIGH = 0.95, 1.05

def constant(rate_bps: float) -> Trace:
    return Trace(np.array([0.0]), np.array([rate_bps]), 3600.0, name=f"{rate_bps / 1e6:g}Mbit/s")


# --- shaping accuracy ---------------------------------------------------------------------------
def reps_for(seconds: float, quick: bool) -> int:
    if quick:
        return 3 if seconds < 2.0 else 1
    return 5 if seconds < 5.0 else 2


def measure_rate(link: Link, rate_bps: float, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """All sizes at one rate on a freshly set-up link; one row per size."""
    link.bind(constant(rate_bps))
    clock = ScenarioClock()
    link.setup(clock)
    try:
        pacer, rows = link.uplink_pacer(), []
        with sink.connected_sink(link) as sock:
            for size in sizes:
                message = sink.message(os.urandom(size))
                expected = pacer.expected_seconds(len(message), clock.now())
                times = []
                for _ in range(reps_for(expected, args.quick)):
                    time.sleep(0.05)  # an idle gap, as between requests
                    start = time.monotonic()
                    pacer.send(sock, message, clock)
                    times.append(sink.read_reply(sock)[0] - start)
                ratios = [t / expected for t in times]
                rows.append({"rate_bps": rate_bps, "size_bytes": size, "expected_s": expected, "times_s": times,
                             "ratios": ratios, "median_ratio": statistics.median(ratios)})  # fmt: skip
        return rows
    finally:
        link.teardown()


def measure_link(name: str, make: Callable[[], Link], args: argparse.Namespace) -> dict:
    rows, skipped = [], []
    for rate in RATES_BPS:
        sizes = [s for s in SIZES if not (args.quick and 8 * s / rate > args.max_combo_s)]
        skipped += [{"rate_bps": rate, "size_bytes": s} for s in SIZES if s not in sizes]
        rows += measure_rate(make(), rate, sizes, args)
        print(f"  {name}: {rate / 1e6:g} Mbit/s done", file=sys.stderr, flush=True)
    medians = [row["median_ratio"] for row in rows]
    return {"rows": rows, "skipped_combos": skipped, "median_time_ratio": statistics.median(medians),
            "min_ratio": min(medians), "max_ratio": max(medians)}  # fmt: skip


# --- loopback throughput ----------------------------------------------------------------------
def median_seconds(func: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call."""
    func()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def socket_roundtrip(client: socket.socket, server: socket.socket, data: bytes) -> None:
    """Send ``data`` and wait until the other end has received all of it."""
    buf = bytearray(len(data))

    def receive() -> None:
        view, got = memoryview(buf), 0
        while got < len(buf):
            got += server.recv_into(view[got:], min(len(buf) - got, 1 << 22))

    reader = threading.Thread(target=receive)
    reader.start()
    client.sendall(data)
    reader.join()


def frame_roundtrip(client: socket.socket, server: socket.socket, tensor: torch.Tensor, wire) -> None:
    """encode_frame + send on one end, read_frame + decode on the other."""
    out: list = []
    reader = threading.Thread(target=lambda: out.append(wire.read_frame(server).values()))
    reader.start()
    client.sendall(wire.encode_frame(wire.Kind.REQUEST, {"cut": 0}, [tensor]))
    reader.join()
    if not torch.equal(out[0][0], tensor):
        raise AssertionError("frame path changed the tensor")


def measure_throughput(nbytes: int, reps: int) -> dict:
    data = os.urandom(nbytes)
    source, target = np.frombuffer(data, dtype=np.uint8), np.empty(nbytes, dtype=np.uint8)
    copy_s = median_seconds(lambda: np.copyto(target, source), reps)  # memcpy into a warm buffer
    client, server = loopback_pair()
    try:
        socket_s = median_seconds(lambda: socket_roundtrip(client, server, data), reps)
        result = {"bytes": nbytes, "memcpy_s": copy_s, "socket_s": socket_s,
                  "socket_share_of_memcpy": copy_s / socket_s}  # fmt: skip
        try:
            from splitcomp.link import wire
        except ImportError as exc:
            result["frame_path"] = f"skipped: splitcomp.link.wire not importable ({exc})"
            return result
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        frame_s = median_seconds(lambda: frame_roundtrip(client, server, tensor, wire), reps)
        result.update({"frame_s": frame_s, "frame_share_of_memcpy": copy_s / frame_s})
        return result
    finally:
        client.close()
        server.close()


# --- report -----------------------------------------------------------------------------------
def print_table(name: str, result: dict) -> None:
    cells = {(row["rate_bps"], row["size_bytes"]): row["median_ratio"] for row in result["rows"]}
    print(f"\n{name}: achieved time / (size/rate + delay), median of repeats")
    print("rate \\ size  " + "".join(f"{s // 1024:>9}K" for s in SIZES))
    for rate in RATES_BPS:
        line = "".join(f"{cells[(rate, s)]:>10.3f}" if (rate, s) in cells else f"{'-':>10}" for s in SIZES)
        print(f"{rate / 1e6:>6g} Mbit/s{line}")
    print(
        f"median {result['median_time_ratio']:.3f}, range {result['min_ratio']:.3f}..{result['max_ratio']:.3f}"
    )


def print_throughput(result: dict) -> None:
    def gbps(seconds: float) -> float:
        return 8 * result["bytes"] / seconds / 1e9

    print(f"\nunshaped loopback, {result['bytes'] >> 20} MiB messages, Gbit/s (share of memcpy):")
    print(f"  memcpy {gbps(result['memcpy_s']):.1f}")
    for path in ("socket", "frame"):
        if f"{path}_s" in result:
            print(f"  {path} path {gbps(result[f'{path}_s']):.2f} ({result[f'{path}_share_of_memcpy']:.3f})")
    if isinstance(result.get("frame_path"), str):
        print(f"  frame path {result['frame_path']}")


def targets(results: dict) -> list[dict]:
    out = []
    for name, key in (("shaped", "shaped_median_time_ratio"), ("tc", "tc_median_time_ratio")):
        if name in results:
            value = results[name]["median_time_ratio"]
            out += [{"name": key, "value": value, "op": "<=", "target": TARGET_HIGH},
                    {"name": key, "value": value, "op": ">=", "target": TARGET_LOW}]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip combos over --max-combo-s, fewer repeats")
    parser.add_argument("--json", type=Path, help="write raw figures and targets here")
    parser.add_argument("--delay-s", type=float, default=0.01, help="one-way delay of every link")
    parser.add_argument("--max-combo-s", type=float, default=10.0, help="--quick skips longer transfers")
    args = parser.parse_args()

    links: dict[str, Callable[[], Link]] = {
        "shaped": lambda: ShapedLink(delay_s=args.delay_s),
        "tc": lambda: netns.TcLink(qdisc="tbf", delay_s=args.delay_s),
        "tc_htb": lambda: netns.TcLink(qdisc="htb", delay_s=args.delay_s),
    }
    results: dict = {}
    skipped: dict[str, str] = {}
    for name, make in links.items():
        try:
            results[name] = measure_link(name, make, args)
        except SplitcompError as exc:  # tc without root: report, do not fail the benchmark
            skipped[name] = str(exc)
    for name, result in results.items():
        print_table(name, result)
    for name, reason in skipped.items():
        print(f"\n{name}: skipped ({reason})")

    throughput = measure_throughput(16 << 20 if args.quick else 64 << 20, 5 if args.quick else 9)
    print_throughput(throughput)

    report = {"config": {"quick": args.quick, "delay_s": args.delay_s, "sizes_bytes": SIZES, "rates_bps": RATES_BPS},
              "links": results, "skipped": skipped, "loopback_throughput": throughput, "targets": targets(results)}  # fmt: skip
    print()
    for target in report["targets"]:
        ok = (
            target["value"] <= target["target"]
            if target["op"] == "<="
            else target["value"] >= target["target"]
        )
        print(
            f"{target['name']} = {target['value']:.3f} {target['op']} {target['target']}: {'met' if ok else 'MISSED'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
