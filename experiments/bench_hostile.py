"""Hostile peers against a real edge-server process on loopback, while a legitimate device runs.

The server (``splitcomp-serve`` in its own process: MobileNetV3-Small at 64 px, codec zstd, a
shared secret from the environment) serves a legitimate device (full offloading, one request
every 20 ms, from 127.0.0.1) alone (calm: half the requests before the attack, half after), and
while a second process attacks it from eight other loopback addresses:

* 40 connections that trickle a HELLO one byte every half second, 40 that connect and say
  nothing, 20 insiders (holding the secret) that finish the handshake and idle, 10 insiders
  that trickle a request's payload: 110 connections held at once, reopened when closed;
* at fixed rates (``RATES_HZ``, each on a new connection): decompression bombs in every codec
  (zstd declaring and hiding its 256 MiB, lz4, an 8000x8000 PNG and a 20000x20000 JPEG, all
  dressed as a batch of 64 images) 10/s; oversize declarations (a 1 TiB payload, a HELLO with a
  payload, 16 GiB items) 4/s; malformed headers (a 5000-digit integer, NaN, deep nesting, a list
  for a codec name) 4/s; a recorded session (HELLO and REQUEST, captured from an insider)
  replayed without the secret 2/s.

Figures: the server's resident memory (``VmRSS``, ``VmHWM`` after resetting it at the start of the
attack, and sampled every 20 ms) above its idle level after the calm phase; the legitimate
device's request latency (head, encode, exchange; or the local tail when it falls back) at p95
under attack over calm; requests lost (neither answered nor fallen back); answers whose class
differs from the unsplit model's on the device (computed there, independently of the server);
whether the server is alive and answers correctly at the end; and replayed requests answered.

    python experiments/bench_hostile.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitcomp.configs import project_root

ROOT = project_root()
OVERRIDES = ["model=torchvision", "model.name=mobilenet_v3_small", "dataset=samples", "dataset.image_size=64",
             "codec=zstd", "link=loopback", "server.threads=1", "server.host=127.0.0.1", "server.port=0"]
ATTACK_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]
# one-shot hostile connections a second, by kind (the held ones are reopened as soon as closed)
RATES_HZ = {"bombs": 10.0, "oversize": 4.0, "malformed": 4.0, "replay": 2.0}
SECRET_ENV = "SPLITCOMP_AUTH_SECRET"
TARGETS = [("peak_rss_over_idle_mib", "<=", 256.0), ("legit_p95_attack_over_calm", "<=", 2.0),
           ("legit_requests_lost", "<=", 0), ("wrong_answers", "<=", 0), ("server_alive_at_end", ">=", 1),
           ("replays_answered", "<=", 0)]


# --- the legitimate device ----------------------------------------------------------------------
class LegitDevice:
    """Full offloading (the server computes the whole model, so whatever slows the server shows)
    over one connection, falling back to the device on any failure."""

    def __init__(self, cfg: Any, port: int) -> None:
        from hydra.utils import instantiate

        from splitcomp.build import build_workload
        from splitcomp.link.shaping import ScenarioClock
        from splitcomp.runtime.client import EdgeClient
        from splitcomp.runtime.device import Device
        from splitcomp.runtime.security import auth_secret

        self.work = build_workload(cfg)
        plan = self.work.plan
        self.cut = plan.cuts[0]
        self.device = Device(self.work.model, plan)
        dataset = instantiate(cfg.dataset)
        self.images = [dataset[i][0].unsqueeze(0) for i in range(len(dataset))]
        with torch.inference_mode():
            self.references = [int(self.work.model(x).argmax(1)[0]) for x in self.images]
        self.client = EdgeClient("127.0.0.1", port, self.work.fingerprint, ScenarioClock(), io_timeout_s=10.0,
                                 secret=auth_secret(cfg.server), classes=plan.cuts[-1].elements)

    def run(self, n_requests: int, gap_s: float) -> dict[str, Any]:
        from splitcomp.errors import PeerError

        latencies, answered, fallbacks, lost, wrong = [], 0, 0, 0, 0
        for i in range(n_requests):
            x, reference = self.images[i % len(self.images)], self.references[i % len(self.images)]
            started = time.perf_counter()
            try:
                head = self.device.run_head(self.cut.index, x)
                try:
                    if not self.client.connected:
                        self.client.connect()
                    frame = self.client.request_frame(i, self.cut.index, head.values, self.work.codec)
                    logits = self.client.exchange(frame).logits
                    answered += 1
                except PeerError:
                    self.client.close()
                    logits, _ = self.device.run_tail_locally(self.cut.index, head.values)
                    fallbacks += 1
                latencies.append(time.perf_counter() - started)
                wrong += int(int(logits.argmax(1)[0]) != reference)
            except Exception as exc:  # noqa: BLE001 (a request that neither answered nor fell back)
                print(f"request {i} lost: {type(exc).__name__}: {exc}", file=sys.stderr)
                lost += 1
            time.sleep(gap_s)
        return phase({"requests": n_requests, "answered": answered, "fallbacks": fallbacks, "lost": lost,
                      "wrong_answers": wrong, "latencies_ms": [1000 * t for t in latencies]})


def phase(counts: dict[str, Any]) -> dict[str, Any]:
    """A phase's counts with its latency percentiles."""
    ms = np.array(counts["latencies_ms"] or [float("nan")])
    return {**counts, "latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p95": float(np.percentile(ms, 95)),
            "latency_ms_max": float(ms.max())}


def pooled(*phases: dict[str, Any]) -> dict[str, Any]:
    """Several phases as one (the calm before and after the attack: drift in the machine's
    other load weighs on both sides of the ratio alike)."""
    keys = ("requests", "answered", "fallbacks", "lost", "wrong_answers", "latencies_ms")
    return phase({key: sum((p[key] for p in phases), [] if key == "latencies_ms" else 0) for key in keys})


# --- the server's memory ------------------------------------------------------------------------
class MemoryWatch:
    """Samples a process's resident memory every 20 ms and resets its kernel peak at the start."""

    def __init__(self, pid: int) -> None:
        from splitcomp.profile import memory

        self.memory, self.pid = memory, pid
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemoryWatch:
        with contextlib.suppress(OSError):
            self.memory.reset_peak_rss(self.pid)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.samples.append(self.memory.rss_mib(self.pid))

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def peak_mib(self) -> float:
        peak = max(self.samples, default=0.0)
        with contextlib.suppress(OSError):
            peak = max(peak, self.memory.peak_rss_mib(self.pid))
        return peak


class CpuWatch:
    """Each process's CPU time over a phase, as a share of the phase's wall time (2.0 = two cores)."""

    def __init__(self, pids: dict[str, int]) -> None:
        from splitcomp.profile.memory import cpu_seconds

        self.cpu_seconds, self.pids = cpu_seconds, pids
        self.shares: dict[str, float] = {}

    def __enter__(self) -> CpuWatch:
        self.started = time.monotonic()
        self.before = {name: self.cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.monotonic() - self.started
        self.shares = {name: (self.cpu_seconds(pid) - self.before[name]) / wall for name, pid in self.pids.items()}


# --- the attacker (a process of its own: its work must not share the device's interpreter) ------
class Attack:
    """The hostile mix; each kind runs in threads until ``stop`` and counts what happened."""

    def __init__(self, setup: dict[str, Any]) -> None:
        from splitcomp.runtime.security import auth_secret

        self.port = int(setup["port"])
        self.fingerprint = setup["fingerprint"]
        self.image_shape = [64, *setup["image_shape"]]
        self.key = auth_secret({})
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._next_address = 0

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def source(self) -> str:
        with self._lock:
            self._next_address += 1
            return ATTACK_ADDRESSES[self._next_address % len(ATTACK_ADDRESSES)]

    def peer(self, insider: bool = False) -> Any:
        from splitcomp.link.wire import Kind
        from splitcomp.runtime.raw_peer import RawPeer

        peer = RawPeer(self.port, self.key if insider else None, self.source(), timeout_s=10.0)
        self.count("connections")
        if insider and (answer := peer.hello(self.fingerprint)).kind is not Kind.WELCOME:
            peer.close()
            raise ConnectionError(f"the server answered an insider's HELLO with {answer.kind.name}")
        return peer

    def forever(self, name: str, work: Any) -> None:
        while not self.stop.is_set():
            try:
                work()
            except Exception:  # noqa: BLE001 (the server hung up or refused: as expected)
                self.count(f"{name}_ended")
                self.stop.wait(0.05)

    # --- connections held open ----------------------------------------------------------------
    def trickle_hello(self) -> None:
        from splitcomp.link.auth import new_nonce
        from splitcomp.link.wire import Kind, encode_frame
        from splitcomp.runtime.handshake import Hello

        peer = self.peer()
        try:
            for byte in encode_frame(Kind.HELLO, Hello(self.fingerprint, 0.0, new_nonce()).meta()):
                if self.stop.wait(0.5):
                    return
                peer.sock.send(bytes([byte]))
        finally:
            peer.close()

    def silent(self) -> None:
        peer = self.peer()
        try:
            peer.drain(30.0)  # until the server closes it
        finally:
            peer.close()

    def idle_insider(self) -> None:
        peer = self.peer(insider=True)
        try:
            while not self.stop.wait(0.5):
                pass
        finally:
            peer.close()

    def trickle_payload(self) -> None:
        from splitcomp.link.codecs import RawCodec
        from splitcomp.link.wire import Kind

        peer = self.peer(insider=True)
        image = torch.zeros(self.image_shape, dtype=torch.uint8)
        frame = peer.encode(Kind.REQUEST, {"request": 1, "cut": 0, "t": 0.0}, [image], RawCodec())
        try:
            peer.sock.sendall(frame[:4096])
            for byte in frame[4096:]:
                if self.stop.wait(0.5):
                    return
                peer.sock.send(bytes([byte]))
        finally:
            peer.close()

    # --- one-shot hostile frames -----------------------------------------------------------------
    def declare(self, insider: bool, kind: Any, header: bytes, payload_len: int, counter: str) -> None:
        """A prefix and header (with a valid header MAC from an insider), and nothing more."""
        from splitcomp.link.wire import FLAG_MAC, MAGIC, PREFIX, VERSION

        peer = self.peer(insider=insider)
        try:
            prefix = PREFIX.pack(MAGIC, VERSION, int(kind), FLAG_MAC if insider else 0, len(header), payload_len)
            tag = b""
            if insider:
                mac = peer.auth.send_mac()
                mac.update(prefix)
                mac.update(header)
                tag = mac.digest()
            peer.sock.sendall(prefix + header + tag)
            peer.drain(2.0)
            self.count(counter)
        finally:
            peer.close()

    def oversize(self) -> list[Any]:
        """Sizes no frame may have: a 1 TiB payload, a HELLO with a payload, items of 16 GiB."""
        from splitcomp.link.wire import Kind

        def item(dtype: str, shape: list[int], nbytes: int) -> bytes:
            return json.dumps({"meta": {"request": 1, "cut": 0, "t": 0},
                               "items": [{"codec": "raw", "dtype": dtype, "shape": shape, "nbytes": nbytes}]}).encode()

        declarations = [(False, Kind.REQUEST, item("uint8", [1], 1), 2**40),
                        (False, Kind.HELLO, b'{"meta":{},"items":[]}', 200 << 20),
                        (True, Kind.REQUEST, item("float64", [2**31 - 1], 8 * (2**31 - 1)), 200 << 20),
                        (True, Kind.REQUEST, item("uint8", [200 << 20], 200 << 20), 200 << 20)]
        return [lambda d=d: self.declare(*d, "oversize_sent") for d in declarations]

    def malformed(self) -> list[Any]:
        """Headers that break JSON parsers and naive validators."""
        from splitcomp.link.wire import Kind

        headers = [b'{"meta":{"request":1,"cut":' + b"7" * 5000 + b',"t":0},"items":[]}',
                   b'{"meta":{"request":1,"cut":0,"t":NaN},"items":[]}',
                   b'{"meta":' + b"[" * 20000 + b"]" * 20000 + b',"items":[]}',
                   b'{"meta":{"request":1,"cut":0,"t":0},"items":[{"codec":["raw"],"dtype":"uint8",'
                   b'"shape":[1],"nbytes":0}]}']
        return [lambda h=h: self.declare(True, Kind.REQUEST, h, 0, "malformed_sent") for h in headers]

    def bomb(self, bomb: Any) -> None:
        from splitcomp.link.wire import Kind

        peer = self.peer(insider=True)
        try:
            peer.frame(Kind.REQUEST, {"request": 1, "cut": 0, "t": 0.0}, [bomb])
            peer.drain(2.0)
            self.count("bombs_sent")
        finally:
            peer.close()

    def replay(self, recording: list[bytes]) -> None:
        from splitcomp.link.wire import PREFIX, Kind

        peer = self.peer()
        try:
            for frame in recording:
                peer.sock.sendall(frame)
            answer = peer.drain(2.0)
            self.count("replays_sent")
            offset = 0  # walk the frames that came back: a RESPONSE means a replay was answered
            while offset + PREFIX.size <= len(answer):
                _, _, kind, flags, header_len, payload_len = PREFIX.unpack_from(answer, offset)
                self.count("replays_answered", int(kind == Kind.RESPONSE))
                offset += PREFIX.size + header_len + payload_len + (64 if flags else 0)
        finally:
            peer.close()

    def paced(self, name: str, jobs: list[Any], rate_hz: float) -> None:
        """Start ``jobs`` in turn, ``rate_hz`` a second, each on its own thread (a slow answer
        does not slow the pace)."""
        period, due, turn = 1.0 / rate_hz, time.monotonic(), 0
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            threading.Thread(target=self.once, args=(name, jobs[turn % len(jobs)]), daemon=True).start()
            turn, due = turn + 1, due + period

    def once(self, name: str, job: Any) -> None:
        try:
            job()
        except Exception:  # noqa: BLE001 (the server hung up or refused: as expected)
            self.count(f"{name}_ended")

    def record_session(self) -> list[bytes]:
        """HELLO and REQUEST of a real insider session, as someone on the path would capture them."""
        from splitcomp.link.codecs import ZstdCodec
        from splitcomp.link.wire import Kind

        peer = self.peer(insider=True)
        try:
            image = torch.zeros([1, *self.image_shape[1:]], dtype=torch.uint8)
            peer.frame(Kind.REQUEST, {"request": 99, "cut": 0, "t": 0.0}, [image], ZstdCodec())
            peer.drain(1.0)
            return peer.sent[:2]
        finally:
            peer.close()

    def run(self) -> None:
        bombs = make_bombs(self.image_shape)
        recording = self.record_session()
        held = [("trickle_hello", self.trickle_hello, 40), ("silent", self.silent, 40),
                ("idle_insider", self.idle_insider, 20), ("trickle_payload", self.trickle_payload, 10)]
        paced = [("bombs", [lambda b=b: self.bomb(b) for b in bombs], RATES_HZ["bombs"]),
                 ("oversize", self.oversize(), RATES_HZ["oversize"]),
                 ("malformed", self.malformed(), RATES_HZ["malformed"]),
                 ("replay", [lambda: self.replay(recording)], RATES_HZ["replay"])]
        threads = [threading.Thread(target=self.forever, args=(name, work), daemon=True)
                   for name, work, copies in held for _ in range(copies)]
        threads += [threading.Thread(target=self.paced, args=job, daemon=True) for job in paced]
        started = time.monotonic()
        for thread in threads:
            thread.start()
            time.sleep(0.005)
        print("ready", flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
        self.stop.set()
        self.counts["attack_s"] = round(time.monotonic() - started, 1)
        deadline = time.monotonic() + 10
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def make_bombs(image_shape: list[int]) -> list[Any]:
    """A bomb in every codec, each dressed as a batch of uint8 images of ``image_shape``."""
    import zlib

    import lz4.frame
    import zstandard
    from PIL import Image

    from splitcomp.link.codecs import EncodedTensor

    shape, chunk = tuple(image_shape), bytes(1 << 20)
    stream = zstandard.ZstdCompressor(level=1).compressobj(size=256 << 20)
    zstd_sized = b"".join([*(stream.compress(chunk) for _ in range(256)), stream.flush()])
    stream = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    zstd_hidden = b"".join([*(stream.compress(chunk) for _ in range(256)), stream.flush()])
    compressor = lz4.frame.LZ4FrameCompressor()
    lz4_bomb = b"".join([compressor.begin(), *(compressor.compress(chunk) for _ in range(40)), compressor.flush()])

    def png(width: int, height: int) -> bytes:
        def part(kind: bytes, data: bytes) -> bytes:
            return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

        deflate, row = zlib.compressobj(9), bytes(3 * width + 1)
        rows = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
        return b"".join([b"\x89PNG\r\n\x1a\n", part(b"IHDR", struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)),
                         part(b"IDAT", rows), part(b"IEND", b"")])

    def jpeg(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        data = bytearray(buffer.getvalue())
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        return bytes(data)

    def images(name: str, first: bytes, small: bytes) -> EncodedTensor:
        files = [first] + [small] * (shape[0] - 1)
        return EncodedTensor(name, "uint8", shape, b"".join(files),
                             {"format": name.upper(), "sizes": [len(f) for f in files]})

    return [EncodedTensor("zstd", "uint8", shape, zstd_sized), EncodedTensor("zstd", "uint8", shape, zstd_hidden),
            EncodedTensor("lz4", "uint8", shape, lz4_bomb), images("png", png(8000, 8000), png(8, 8)),
            images("jpeg", jpeg(20000, 20000), jpeg(8, 8))]


def attacker_main() -> None:
    attack = Attack(json.loads(sys.argv[2]))
    attack.run()
    print(json.dumps(attack.counts))


# --- the benchmark --------------------------------------------------------------------------------
def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from splitcomp.tasks.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    from splitcomp.profile.memory import rss_mib
    from splitcomp.redact import save_private_config
    from splitcomp.runtime.process import ServerProcess

    os.environ[SECRET_ENV] = secrets.token_hex(24)  # inherited by the server and the attacker
    torch.set_num_threads(1)  # this process is the device (device.threads)
    n_requests = args.requests or (200 if args.quick else 600)
    cfg = compose(OVERRIDES)
    work_dir = ROOT / "outputs" / "bench" / f"hostile_{time.strftime('%Y%m%d_%H%M%S')}"
    config_file = save_private_config(cfg, work_dir / "server_config.yaml")
    with ServerProcess(config_file, work_dir / "server").start() as server:
        device = LegitDevice(cfg, server.port)
        device.run(20, 0.0)  # warm-up: the cut's head and tail built, allocations made
        with CpuWatch({"device": os.getpid(), "server": server.proc.pid}) as calm_cpu:
            calm_before = device.run(n_requests // 2, args.gap_s)
        time.sleep(1.0)
        idle_rss = rss_mib(server.proc.pid)
        setup = {"port": server.port, "fingerprint": device.work.fingerprint,
                 "image_shape": list(device.work.example_input.shape[1:])}
        attacker = subprocess.Popen([sys.executable, __file__, "--attacker", json.dumps(setup)], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with MemoryWatch(server.proc.pid) as memory:
            if attacker.stdout.readline().strip() != "ready":
                raise RuntimeError("the attacker process failed to start")
            time.sleep(args.ramp_s)  # held connections opened, the first bombs thrown
            pids = {"device": os.getpid(), "server": server.proc.pid, "attacker": attacker.pid}
            with CpuWatch(pids) as attack_cpu:
                attacked = device.run(n_requests, args.gap_s)
            attack_counts = json.loads(attacker.communicate(input="", timeout=60)[0] or "{}")
        time.sleep(1.0)
        calm = pooled(calm_before, device.run(n_requests - n_requests // 2, args.gap_s))
        alive = server.alive
        final_check = LegitDevice(cfg, server.port).run(5, 0.0) if alive else {}
        serving = final_check.get("answered") == 5 and final_check.get("wrong_answers") == 0
        final_rss = rss_mib(server.proc.pid) if alive else float("nan")
    figures = {
        "idle_rss_mib": idle_rss, "peak_rss_mib": memory.peak_mib(), "final_rss_mib": final_rss,
        "peak_rss_over_idle_mib": memory.peak_mib() - idle_rss,
        "legit_p95_attack_over_calm": attacked["latency_ms_p95"] / calm["latency_ms_p95"],
        "legit_requests_lost": calm["lost"] + attacked["lost"],
        "wrong_answers": calm["wrong_answers"] + attacked["wrong_answers"],
        "server_alive_at_end": int(bool(serving)),
        "replays_answered": attack_counts.get("replays_answered", 0),
    }
    return {"config": {"quick": args.quick, "requests_per_phase": n_requests, "gap_s": args.gap_s,
                       "ramp_s": args.ramp_s, "overrides": OVERRIDES, "cut": device.cut.name, "rates_hz": RATES_HZ,
                       "load_average": os.getloadavg()},
            "calm": calm, "attack": attacked, "attack_counts": attack_counts, "figures": figures,
            "cpu_share": {"calm": calm_cpu.shares, "attack": attack_cpu.shares},
            "targets": [{"name": name, "value": figures[name], "op": op, "target": target}
                        for name, op, target in TARGETS]}


def print_report(report: dict[str, Any]) -> None:
    calm, attack = report["calm"], report["attack"]
    print(f"\nlegitimate device at cut {report['config']['cut']}, {calm['requests']} requests per phase")
    print(f"{'phase':<8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'answered':>10}{'fallback':>10}{'lost':>6}{'wrong':>7}")
    for name, phase in (("calm", calm), ("attack", attack)):
        print(f"{name:<8}{phase['latency_ms_p50']:>9.1f}{phase['latency_ms_p95']:>9.1f}{phase['latency_ms_max']:>9.1f}"
              f"{phase['answered']:>10}{phase['fallbacks']:>10}{phase['lost']:>6}{phase['wrong_answers']:>7}")
    figures = report["figures"]
    print(f"\nserver RSS: idle {figures['idle_rss_mib']:.0f} MiB, peak {figures['peak_rss_mib']:.0f} MiB, "
          f"end {figures['final_rss_mib']:.0f} MiB")
    print("attack:", ", ".join(f"{k} {v}" for k, v in sorted(report["attack_counts"].items())))
    for phase, shares in report["cpu_share"].items():
        print(f"CPU ({phase}):", ", ".join(f"{name} {share:.2f}" for name, share in shares.items()), "cores")
    print(f"load average {report['config']['load_average']}\n")
    for target in report["targets"]:
        value = target["value"]
        ok = value <= target["target"] if target["op"] == "<=" else value >= target["target"]
        print(f"{target['name']} = {value:.3f} {target['op']} {target['target']}: {'met' if ok else 'MISSED'}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--attacker":
        attacker_main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 requests per phase (default 600)")
    parser.add_argument("--json", type=Path, help="write raw figures and targets here")
    parser.add_argument("--requests", type=int, default=0, help="requests per phase (overrides --quick)")
    parser.add_argument("--gap-s", type=float, default=0.02, help="pause between the device's requests")
    parser.add_argument("--ramp-s", type=float, default=3.0, help="attack time before the device starts")
    args = parser.parse_args()
    report = run(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
