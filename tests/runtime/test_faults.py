"""The runtime survives faults and bad peers, and loses no request."""

import random
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lz4.frame
import pytest
import torch
import zstandard
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from splitcomp.build import build_workload
from splitcomp.link.auth import new_nonce
from splitcomp.link.codecs import (
    EncodedTensor,
    Float16Codec,
    Int8Codec,
    JpegCodec,
    Lz4Codec,
    PngCodec,
    RawCodec,
    ZstdCodec,
)
from splitcomp.link.shaping import LoopbackLink, ScenarioClock
from splitcomp.link.wire import Kind, encode_frame
from splitcomp.policy.estimators import EwmaEstimator
from splitcomp.policy.simple import Static
from splitcomp.profile import get_profiles
from splitcomp.profile.latency import LatencyModel
from splitcomp.profile.memory import peak_rss_growth_mib
from splitcomp.runtime.client import EdgeClient
from splitcomp.runtime.device import Device
from splitcomp.runtime.handshake import Hello
from splitcomp.runtime.process import ServerProcess
from splitcomp.runtime.server import ServerSettings
from splitcomp.runtime.socket_runtime import SocketParts, SocketRuntime
from splitcomp.scenario import constant
from splitcomp.scenario.arrivals import ClosedLoop
from splitcomp.sim import RunEnv
from splitcomp.tasks.common import CONF_DIR

# --- fuzzing a live server ---------------------------------------------------------------------


def _valid_frames(plan, example):
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        values = tuple(head(example))
    return [encode_frame(Kind.REQUEST, {"request": 1, "cut": 1, "t": 0.0}, values, RawCodec()),
            encode_frame(Kind.PROBE, {}, [torch.zeros(64, dtype=torch.uint8)]),
            encode_frame(Kind.REQUEST, {"request": 2, "cut": 0}, (example,), RawCodec())]


def _mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    kind = rng.randrange(7)
    if kind == 0:  # truncate anywhere
        return bytes(data[: rng.randrange(len(data))])
    if kind == 1:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # lie about the lengths
        header_len, payload_len = rng.choice([(0, 0), (2**32 - 1, 5), (10, 2**63), (rng.randrange(2**16), rng.randrange(2**20))])
        return bytes(data[:8]) + struct.pack("!IQ", header_len, payload_len) + bytes(data[20:])
    if kind == 3:  # random bytes in the header
        start = rng.randrange(20, min(len(data), 200))
        data[start : start + 8] = rng.randbytes(8)
        return bytes(data)
    if kind == 4:  # garbage
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 5:  # edit the JSON header values
        text = bytes(data).replace(b'"cut":1', rng.choice([b'"cut":-1', b'"cut":"x"', b'"cut":99999', b'"cut":null']))
        text = text.replace(b'"dtype":"float32"', rng.choice([b'"dtype":"object"', b'"dtype":"int64"', b'"dtype":1']))
        return text.replace(b'"shape":[', rng.choice([b'"shape":[-1,', b'"shape":[1e9,', b'"shape":["a",', b'"shape":[']))
    return bytes(data) + rng.randbytes(rng.randrange(1, 50))  # trailing junk


def _send_raw(port: int, hello: bytes, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        try:  # the server may hang up at any point: that is its right
            sock.sendall(hello + payload)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def test_ten_thousand_malformed_frames_leave_the_server_serving(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    server, port = live_server(settings=ServerSettings(io_timeout_s=1.0))
    hello = encode_frame(Kind.HELLO, Hello(fingerprint, time.time(), new_nonce()).meta())
    rng = random.Random(7)
    valid = _valid_frames(plan, example)
    for i in range(10_000):
        frame = _mutate(rng.choice(valid + [hello]), rng)
        _send_raw(port, hello if i % 2 else b"", frame)
    client = connect(port, fingerprint)
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        reply = client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec()))
        assert torch.equal(reply.logits, tiny[0](example))
    assert server.rejected_frames > 1000


AGREED = [ZstdCodec(), Lz4Codec(), PngCodec(), JpegCodec(), Float16Codec(), Int8Codec()]
EVERY_CODEC = [RawCodec(), *AGREED]


def _bomb(codec_name: str, nbytes: int) -> bytes:
    """``nbytes`` of zeros squeezed by a compressing codec (streamed: never held whole here)."""
    chunk = bytes(1 << 20)
    if codec_name == "zstd":
        stream = zstandard.ZstdCompressor(level=1).compressobj(size=nbytes)
        return b"".join([*(stream.compress(chunk) for _ in range(nbytes >> 20)), stream.flush()])
    compressor = lz4.frame.LZ4FrameCompressor()
    parts = [compressor.begin(source_size=nbytes), *(compressor.compress(chunk) for _ in range(nbytes >> 20))]
    return b"".join([*parts, compressor.flush()])


def _frames_in_every_codec(plan, example):
    """Valid requests at an image cut and a float cut in every codec, compressed bombs dressed as
    both, and a probe: what the mutations start from."""
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        floats = tuple(head(example))
    frames = [encode_frame(Kind.PROBE, {}, [torch.zeros(64, dtype=torch.uint8)])]
    for codec in EVERY_CODEC:
        frames.append(encode_frame(Kind.REQUEST, {"request": 1, "cut": 0, "t": 0.0}, (example,), codec))
        frames.append(encode_frame(Kind.REQUEST, {"request": 2, "cut": 1, "t": 0.0}, floats, codec))
    for name, size in (("zstd", 256 << 20), ("lz4", 32 << 20)):
        bomb = _bomb(name, size)
        for shape in ((64, 3, 32, 32), (1, 3, 32, 32)):  # fits the image cut; tiny
            frames.append(encode_frame(Kind.REQUEST, {"request": 3, "cut": 0, "t": 0.0},
                                       [EncodedTensor(name, "uint8", shape, bomb)]))
    return frames


def _mutate_declarations(frame: bytes, rng: random.Random) -> bytes:
    """Lies a hostile peer tells in the header: other codecs, dtypes, bigger shapes, huge lengths."""
    text = frame.replace(b'"codec":"' + rng.choice([c.name.encode() for c in EVERY_CODEC]) + b'"',
                         b'"codec":"' + rng.choice([c.name.encode() for c in EVERY_CODEC]) + b'"')
    text = text.replace(b'"shape":[1,', rng.choice([b'"shape":[64,', b'"shape":[1000000,', b'"shape":[1,']))
    text = text.replace(b'"dtype":"uint8"', rng.choice([b'"dtype":"float64"', b'"dtype":"uint8"']))
    if rng.random() < 0.3:  # a huge payload declared, and only a little of it sent
        text = text[:12] + struct.pack("!Q", rng.choice([200 << 20, 2**40])) + text[20:]
    return text


def _talk(port: int, frames: list[bytes], hold_s: float) -> None:
    """One connection: all ``frames`` back to back, a pause, then read whatever comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            for frame in frames:
                sock.sendall(frame)
            time.sleep(hold_s)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the server may hang up at any point


def test_fuzzing_every_codec_several_frames_per_connection_memory_stays_bounded(tiny, live_server, connect):
    """Bombs in every codec, lying declarations and several frames per connection from four
    peers at once, against a server for each compressing codec: its memory peak stays far below
    what the bombs and declarations ask for (GiB), and it still answers correctly."""
    model, example, plan, fingerprint = tiny
    hello = encode_frame(Kind.HELLO, Hello(fingerprint, time.time(), new_nonce()).meta())
    frames = _frames_in_every_codec(plan, example)
    rng = random.Random(13)
    for codec in AGREED:
        server, port = live_server(settings=ServerSettings(io_timeout_s=1.0, handshake_timeout_s=1.0), codec=codec)
        connections = []
        for _ in range(60):
            picks = [rng.choice(frames) for _ in range(rng.randint(1, 6))]
            mutated = [rng.choice([lambda f: f, lambda f: _mutate(f, rng), lambda f: _mutate_declarations(f, rng)])(f)
                       for f in picks]
            connections.append([hello, *mutated] if rng.random() < 0.9 else mutated)

        def attack(connections=connections, port=port):
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda c: _talk(port, c, rng.choice([0.0, 0.0, 0.2])), connections))

        assert peak_rss_growth_mib(attack) < 200, codec
        assert server.rejected_frames > 30, codec
        client = connect(port, fingerprint)
        with torch.inference_mode():
            reply = client.exchange(client.request_frame(0, 0, (example,), codec))
            assert torch.equal(reply.logits.argmax(1), model(example).argmax(1))


def test_eight_concurrent_clients_do_not_disturb_each_other(tiny, live_server, connect):
    model, example, plan, fingerprint = tiny
    _, port = live_server()
    errors, answered = [], []
    deadline = time.monotonic() + 3.0

    def client_loop(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        try:
            client = connect(port, fingerprint)
            while time.monotonic() < deadline:
                x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=generator)
                cut = plan.cuts[seed % (len(plan.cuts) - 1)]
                head, _ = plan.split(cut)
                with torch.inference_mode():
                    reply = client.exchange(client.request_frame(len(answered), cut.index, tuple(head(x)), RawCodec()))
                    if not torch.equal(reply.logits, model(x)):
                        errors.append(f"client {seed}: wrong logits")
                answered.append(seed)
        except Exception as exc:  # any failure is a test failure
            errors.append(f"client {seed}: {exc}")

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert set(answered) == set(range(8)) and len(answered) > 16


# --- killing the server mid-run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served_config(tmp_path_factory):
    """A config for a small torchvision model, saved for a ``splitcomp-serve`` process."""
    tmp = tmp_path_factory.mktemp("served")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=torchvision", "model.name=mobilenet_v3_small", "dataset=samples", "dataset.image_size=64",
            "link=loopback", "profile.batch_sizes=[1]", "profile.repeats=1", f"profile.cache_dir={tmp}/profiles",
            "server.io_timeout_s=2.0", "device.slowdown=4", "server_load=bursts",  # the world it was written for
            "profile.check=false"])  # faults are tested here; a busy machine may fail the profile checks
    path = tmp / "config.yaml"
    OmegaConf.save(cfg, path)
    return cfg, path


def _socket_run(cfg, port, n_requests, on_request=None, runtime=None):
    work = build_workload(cfg)
    profiles = get_profiles(work.model, work.plan, work.example_input, work.codec, cfg.device, cfg.server,
                            cfg.profile, progress=False)
    candidates = list(profiles.cuts)
    channel = constant(rate_bps=100e6, duration=60.0)
    env = RunEnv(candidates=candidates, latency_model=LatencyModel(profiles), policy=Static(cut="input"),
                 estimator=EwmaEstimator(), arrivals=ClosedLoop(), uplink=channel, n_requests=n_requests)
    clock = ScenarioClock()
    link = LoopbackLink()
    link.bind(channel)

    def connect():
        client = EdgeClient("127.0.0.1", port, work.fingerprint, clock, link=link, connect_timeout_s=1.0,
                            io_timeout_s=10.0)  # a killed server resets at once; no need to be tight
        client.connect()
        return client

    images = [(work.example_input[0] + i % 7, i % 3) for i in range(n_requests)]
    parts = SocketParts(Device(work.model, work.plan), images, work.codec, link, connect, clock)
    runtime = runtime or SocketRuntime(backoff_s=0.05, max_backoff_s=0.2, progress=False)
    if on_request:  # called before request i, once request i - 1 is done
        runtime.observer = lambda record: on_request(record.request + 1)
    return runtime.run(env, parts)


def test_killing_the_server_mid_run_loses_no_request(served_config, tmp_path):
    cfg, path = served_config
    server = ServerProcess(path, tmp_path / "server").start()
    try:
        records = _socket_run(cfg, server.port, 24, on_request=lambda i: server.kill() if i == 8 else None)
    finally:
        server.stop()
    assert len(records) == 24
    assert all(r["prediction"] is not None for r in records)
    assert all(r["prediction"] == r["reference"] for r in records)
    fallbacks = [r["fallback"] for r in records]
    assert not any(fallbacks[:8]) and all(fallbacks[8:])


def test_the_device_reconnects_when_the_server_comes_back(served_config, tmp_path, free_port):
    cfg, path = served_config
    first = ServerProcess(path, tmp_path / "first", extra_overrides=[f"server.port={free_port}"]).start()
    restarted = {}

    def chaos(i):
        if i == 4:
            first.kill()
        if i == 10:
            restarted["server"] = ServerProcess(path, tmp_path / "second",
                                                extra_overrides=[f"server.port={free_port}"]).start()

    try:
        records = _socket_run(cfg, free_port, 20, on_request=chaos)
    finally:
        first.stop()
        if "server" in restarted:
            restarted["server"].stop()
    fallbacks = [r["fallback"] for r in records]
    assert len(records) == 20 and any(fallbacks) and not any(fallbacks[-5:])
    assert all(r["prediction"] == r["reference"] for r in records)


def test_a_server_killed_before_the_next_policy_starts_does_not_end_the_run(served_config, tmp_path):
    """The next policy of an experiment runs on the device while the server is gone; the records
    already measured stay as they were."""
    cfg, path = served_config
    server = ServerProcess(path, tmp_path / "server").start()
    runtime = SocketRuntime(backoff_s=0.05, max_backoff_s=0.2, progress=False)
    try:
        first = _socket_run(cfg, server.port, 6, runtime=runtime)
        server.kill()
        second = _socket_run(cfg, server.port, 6, runtime=runtime)
    finally:
        server.stop()
    assert len(first) == 6 and not any(r["fallback"] for r in first)
    assert len(second) == 6 and all(r["fallback"] and r["bytes_down"] == 0 for r in second)
    assert all(r["prediction"] == r["reference"] for r in first + second)


def test_a_server_that_lies_makes_requests_fall_back_and_the_run_goes_on(served_config, fake_server):
    cfg, _ = served_config
    answers = iter(range(1000))

    def lie(meta):  # NaN logits, another request's id, a malformed load report, in turn
        report = {"request": meta["request"], "queue_s": 0.0, "batch_size": 1}
        kind = next(answers) % 3
        logits = torch.full((1, 1000), float("nan")) if kind == 0 else torch.zeros(1, 1000)
        if kind == 1:
            report["request"] = -5
        if kind == 2:
            report["queue_len"] = "many"
        return encode_frame(Kind.RESPONSE, report, [logits])

    records = _socket_run(cfg, fake_server(lie), 9)
    assert len(records) == 9 and all(r["fallback"] for r in records)
    assert all(r["prediction"] == r["reference"] for r in records)


def test_an_unreachable_server_at_the_start_runs_on_the_device(served_config, free_port):
    cfg, _ = served_config
    records = _socket_run(cfg, free_port, 3)
    assert len(records) == 3 and all(r["fallback"] for r in records)
