"""A fleet on the real runtime: tens of emulated devices on one batching edge server, here.

An emulated device does no head compute while the fleet runs: the real head output of each of
its images at each cut is computed once, before the run, and cached; serving a request, the
device waits the profiled head time of its cut (the slowed-down device's) and sends the cached
tensor over its own shaped link (a :class:`~splitcomp.link.shaping.ShapedLink` on its own
trace window) to the one real server, which computes every tail for real, in batches. So the
server's work and every byte on the wire are real, and only the devices' compute is a wait.

Each device is a :class:`~splitcomp.loop.RequestLoop` on a
:class:`~splitcomp.runtime.socket_runtime.SocketBackend` in its own thread, with its own clock,
link, connection, policy and estimator. Every device connects to the server first; then all
start together (scenario time 0), as a fleet does when its server comes back.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from splitcomp.fleet.metrics import BatchSpan
from splitcomp.link.shaping import ScenarioClock, ShapedLink
from splitcomp.loop import RequestLoop, RunEnv
from splitcomp.profile.timing import precise_sleep
from splitcomp.records import RequestRecord
from splitcomp.runtime.client import EdgeClient
from splitcomp.runtime.device import Device, HeadRun
from splitcomp.runtime.process import bind_listener
from splitcomp.runtime.server import EdgeServer, ServerSettings, batched
from splitcomp.runtime.socket_runtime import Reconnector, SocketBackend, SocketParts
from splitcomp.runtime.tails import TailBank


class HeadCache:
    """The real head output of every (cut, image), and the unsplit model's, computed once."""

    def __init__(self, model: torch.nn.Module, plan: Any, images: Sequence[torch.Tensor],
                 cut_indices: Sequence[int]) -> None:
        self.outputs: dict[tuple[int, int], tuple[Any, ...]] = {}
        self.references: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for cut in cut_indices:
                head, _ = plan.split(plan.cuts[cut])
                for image in images:
                    x = image.unsqueeze(0)
                    self.outputs[(cut, image.data_ptr())] = tuple(head(x))
            for image in images:
                self.references[image.data_ptr()] = model(image.unsqueeze(0))

    def head(self, cut: int, x: torch.Tensor) -> tuple[Any, ...]:
        try:
            return self.outputs[(cut, x.data_ptr())]
        except KeyError:
            raise KeyError(f"no cached head output for cut {cut} of this input; emulated devices serve "
                           "only the images the cache was built on") from None


class EmulatedDevice(Device):
    """A device that waits its profiled head time and returns the cached real head output."""

    def __init__(self, model: torch.nn.Module, plan: Any, cache: HeadCache, head_s: dict[int, float],
                 device_only_s: float) -> None:
        super().__init__(model, plan)
        self.cache = cache
        self.head_s = head_s
        self.device_only_s = device_only_s

    def run_head(self, cut_index: int, x: torch.Tensor) -> HeadRun:
        values = self.cache.head(cut_index, x)
        seconds = self.head_s[cut_index]
        precise_sleep(seconds)
        return HeadRun(values, 0.0, seconds)

    def run_tail_locally(self, cut_index: int, values: tuple[Any, ...]) -> tuple[torch.Tensor, float]:
        """The rest of the model for real (fallbacks are rare), padded to the profiled time."""
        started = time.perf_counter()
        out, _ = super().run_tail_locally(cut_index, values)
        rest = max(0.0, self.device_only_s - self.head_s.get(cut_index, 0.0))
        precise_sleep(rest - (time.perf_counter() - started))
        return out, rest

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.cache.references[x.data_ptr()]


@dataclass
class RealFleetResult:
    records: list[list[RequestRecord]]
    batches: list[BatchSpan]  # the server's tail calls, from the fleet's start
    wall_s: float


def run_real_fleet(envs: Sequence[RunEnv], model: torch.nn.Module, plan: Any, example: torch.Tensor,
                   fingerprint: dict[str, str], codec: Any, images: Sequence[torch.Tensor],
                   settings: ServerSettings, cache: HeadCache | None = None,
                   progress: Callable[[int], None] | None = None) -> RealFleetResult:
    """Run every device of ``envs`` at once against one in-process batching server (loopback);
    each device cycles through ``images``. ``progress(n)`` is called with each finished request."""
    candidates = envs[0].candidates
    cache = cache or HeadCache(model, plan, images, [c.index for c in candidates])
    head_s = {c.index: c.head_at(1) for c in candidates}
    device_only_s = max(head_s.values())
    tails = TailBank(plan, example, torch.device("cpu"))
    warm_up(tails, cache, candidates, settings.max_batch)
    server = EdgeServer(tails, fingerprint, settings=settings, codec=codec)
    listener = bind_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    serving = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    serving.start()
    classes = plan.cuts[-1].elements // example.shape[0]
    loops: list[RequestLoop] = []
    for env in envs:
        clock = ScenarioClock()
        link = ShapedLink(delay_s=0.0, max_transfer_s=env.timeout_s, downlink="unshaped")
        link.bind(env.uplink)

        def connect(clock: ScenarioClock = clock, link: ShapedLink = link) -> EdgeClient:
            client = EdgeClient("127.0.0.1", port, fingerprint, clock, link=link, io_timeout_s=10.0, classes=classes)
            client.connect()
            return client

        samples = ((image, 0) for image in itertools.islice(itertools.cycle(images), env.n_requests))
        device = EmulatedDevice(model, plan, cache, head_s, device_only_s)
        parts = SocketParts(device, samples, codec, link, connect, clock)
        loop = RequestLoop(env, SocketBackend(parts, Reconnector(connect, 0.2, 5.0)))
        if progress is not None:
            loop.on_record = lambda record: progress(1)
        loops.append(loop)
    try:
        for loop in loops:  # the fleet is connected before its clock starts, as after a server restart
            loop.backend.reconnector.get()
        started = time.perf_counter()
        errors = _run_together(loops)
    finally:
        server.stop()
        serving.join(timeout=10)
        listener.close()
        for loop in loops:
            loop.backend.close()
    if errors:
        raise errors[0]
    for loop in loops:
        loop.backend.references.fill(loop.records)  # the unsplit model's class (cached) beside each answer
    spans = [BatchSpan(run.started - started, run.seconds, run.requests, run.cut) for run in server.history]
    return RealFleetResult([loop.records for loop in loops], spans, time.perf_counter() - started)


def warm_up(tails: TailBank, cache: HeadCache, candidates: Sequence[Any], max_batch: int) -> None:
    """Build every tail and run it once at each power-of-two batch size: the first call of a
    tail takes many times its steady time, which would land on the fleet's first requests."""
    with torch.inference_mode():
        for cut in candidates:
            if cut.is_device_only:
                continue
            tail, _ = tails.get(cut.index)
            values = next(v for (c, _), v in cache.outputs.items() if c == cut.index)
            batch = 1
            while batch <= max_batch:
                tail(batched(values, 1, batch))
                batch *= 2


def _run_together(loops: Sequence[RequestLoop]) -> list[BaseException]:
    """Each loop in its own thread, all released at once; the exceptions they raised."""
    gate = threading.Barrier(len(loops))
    errors: list[BaseException] = []

    def run(loop: RequestLoop) -> None:
        try:
            gate.wait()
            loop.run()
        except BaseException as exc:  # noqa: BLE001 (reported to the caller)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(loop,), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
