"""Segment profiles: a model's forward pass timed in the stretches between consecutive candidate cuts.

One pass per batch size times every candidate at once: a cut's head time is the sum of the
stretches before it, its tail time the sum of those after it. This is how the paper-style sweeps
profile big models (VGG-16 at 384 px is ~45 GFLOPs an image) at several batch sizes within minutes,
and it keeps heads in order: a deeper cut's head is never timed faster than a shallower one's.
The head and the tail here run on the same hardware; a device that is ``slowdown`` times slower is
modelled by scaling the head (:func:`cut_profiles`). The passes run node by node (``fx.Interpreter``),
which adds some microseconds of Python per graph node to the stretch that node is in.

Repeats adapt to noise: after ``repeats`` passes at a batch size, more are run (up to
``max_repeats``) while some head or tail time has an interquartile range above ``max_rel_iqr`` of
the whole pass.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx
from tqdm.auto import tqdm

from splitcomp.errors import ConfigError
from splitcomp.files import atomic_write_text
from splitcomp.link.codecs import Codec
from splitcomp.profile.latency import CutProfile, Profiles
from splitcomp.profile.profiler import _decode_all, _encode_all, _output_bytes, _payload_bytes
from splitcomp.profile.timing import check_slowdown, median_and_spread, synchronize, torch_threads

SEGMENTS_FORMAT = "splitcomp-segments/1"


@dataclass
class SegmentProfile:
    """Per batch size, per timed pass, the seconds of each stretch between consecutive ``cuts``
    (``len(cuts) - 1`` of them: stretch ``i`` runs from cut ``i`` to cut ``i + 1``)."""

    cuts: list[str]
    samples: dict[int, list[list[float]]]
    hardware: str = ""
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(self.samples)

    def _sums(self, index: int, batch: int, head: bool) -> list[float]:
        return [sum(stretches[:index] if head else stretches[index:]) for stretches in self.samples[batch]]

    def head(self, index: int, batch: int) -> tuple[float, float]:
        """(median, interquartile range) of the seconds from the input to cut ``index``."""
        return median_and_spread(self._sums(index, batch, head=True))

    def tail(self, index: int, batch: int) -> tuple[float, float]:
        """(median, interquartile range) of the seconds from cut ``index`` to the output."""
        return median_and_spread(self._sums(index, batch, head=False))

    def total(self, batch: int) -> tuple[float, float]:
        return self.head(len(self.cuts) - 1, batch)

    def repeats(self, batch: int) -> int:
        return len(self.samples[batch])

    def widest_rel_iqr(self, batch: int) -> float:
        """The widest interquartile range of any head or tail time, relative to the whole pass."""
        return _widest_rel_iqr(self.samples[batch])

    def to_json(self) -> str:
        return json.dumps({"format": SEGMENTS_FORMAT, "cuts": self.cuts, "hardware": self.hardware, "key": self.key,
                           "samples": {str(b): s for b, s in self.samples.items()}}, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SegmentProfile:
        try:
            data = json.loads(text)
            if data.get("format") != SEGMENTS_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {SEGMENTS_FORMAT}")
            samples = {int(b): [[float(t) for t in run] for run in runs] for b, runs in data["samples"].items()}
            profile = cls(cuts=[str(c) for c in data["cuts"]], samples=samples, hardware=str(data.get("hardware", "")),
                          key=dict(data.get("key", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a splitcomp segment profile ({exc}); delete it to measure again") from None
        if any(len(run) != len(profile.cuts) - 1 for runs in samples.values() for run in runs):
            raise ConfigError("segment profile has runs that do not match its cuts; delete it to measure again")
        return profile

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SegmentProfile:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read segment profile {path} ({exc.strerror}); check the path") from None


def _widest_rel_iqr(runs: list[list[float]]) -> float:
    if len(runs) < 2:
        return float("inf")
    width = len(runs[0])
    totals = [sum(run) for run in runs]
    spreads = [median_and_spread([sum(run[:k]) for run in runs])[1] for k in range(1, width + 1)]
    spreads += [median_and_spread([sum(run[k:]) for run in runs])[1] for k in range(width)]
    return max(spreads) / max(statistics.median(totals), 1e-12)


class _StampingInterpreter(fx.Interpreter):
    """Runs the graph node by node and reads the clock after each boundary node."""

    def __init__(self, gm: fx.GraphModule, boundaries: Sequence[fx.Node | None], device: torch.device,
                 clock: Callable[[], float], capture: dict[fx.Node, tuple[fx.Node, ...]] | None = None) -> None:
        super().__init__(gm)
        self.boundaries = list(boundaries)
        self.at_node = {n: i for i, n in enumerate(self.boundaries) if n is not None}
        self.device, self.clock = device, clock
        self.capture = capture or {}
        self.stamps: list[float] = []
        self.captured: dict[fx.Node, tuple[Any, ...]] = {}

    def _stamp(self) -> float:
        synchronize(self.device)
        return self.clock()

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = self._stamp()
        self.stamps = [start if n is None else float("nan") for n in self.boundaries]
        return super().run(*args, **kwargs)

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.at_node:
            self.stamps[self.at_node[n]] = self._stamp()
            if n in self.capture:
                self.captured[n] = tuple(value if v is n else self.env[v] for v in self.capture[n])
        return value

    def stretches(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.stamps, self.stamps[1:])]


def _batch_of(example: torch.Tensor, batch: int) -> torch.Tensor:
    one = example[:1]
    return one.expand(batch, *one.shape[1:]).contiguous()


def _boundaries(plan: Any, gm: fx.GraphModule, cuts: Sequence[Any]) -> list[fx.Node | None]:
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = [plan.cut_node(cut) for cut in cuts]
    return [None if n is None else by_name[n.name] for n in nodes]


def time_segments(plan: Any, example: torch.Tensor, cuts: Sequence[Any], batch_sizes: Sequence[int],
                  device: torch.device | str = "cpu", threads: int | None = 1, warmup: int = 1, repeats: int = 3,
                  max_repeats: int = 9, max_rel_iqr: float = 0.05, clock: Callable[[], float] = time.perf_counter,
                  progress: bool = True) -> SegmentProfile:
    """Time ``plan.graph_module`` on ``example`` (its first image repeated to each batch size) in
    the stretches between consecutive ``cuts`` (in plan order, usually ``plan.candidates``)."""
    if repeats < 1 or warmup < 0 or max_repeats < repeats:
        raise ConfigError(f"repeats={repeats}, warmup={warmup}, max_repeats={max_repeats}; "
                          "use repeats >= 1, warmup >= 0 and max_repeats >= repeats")
    device = torch.device(device)
    gm = plan.graph_module if device.type == "cpu" else copy.deepcopy(plan.graph_module).to(device)
    interpreter = _StampingInterpreter(gm.eval(), _boundaries(plan, gm, cuts), device, clock)
    samples: dict[int, list[list[float]]] = {}
    bar = tqdm(sorted({int(b) for b in batch_sizes}), desc="segment timing", unit="batch size",
               disable=not progress, leave=False)
    with torch.inference_mode(), torch_threads(threads):
        for batch in bar:
            inputs = _batch_of(example, batch).to(device)
            for _ in range(warmup):
                interpreter.run(inputs)
            runs: list[list[float]] = []
            while len(runs) < repeats or (len(runs) < max_repeats and _widest_rel_iqr(runs) > max_rel_iqr):
                interpreter.run(inputs)
                runs.append(interpreter.stretches())
            samples[batch] = runs
    return SegmentProfile(cuts=[c.name for c in cuts], samples=samples)


def crossing_values(plan: Any, example: torch.Tensor, cuts: Sequence[Any]) -> list[tuple[Any, ...]]:
    """What crosses each of ``cuts`` for the first image of ``example`` (one pass, on the CPU)."""
    gm = plan.graph_module
    boundaries = _boundaries(plan, gm, cuts)
    by_name = {n.name: n for n in gm.graph.nodes}
    capture = {node: tuple(by_name[v] for v in cut.crossing) for node, cut in zip(boundaries, cuts) if node is not None}
    interpreter = _StampingInterpreter(gm.eval(), boundaries, torch.device("cpu"), time.perf_counter, capture)
    with torch.inference_mode():
        interpreter.run(example[:1])
    return [interpreter.captured.get(node, ()) for node in boundaries]


def _median_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cut_profiles(segments: SegmentProfile, cuts: Sequence[Any], crossings: Sequence[tuple[Any, ...]], codec: Codec,
                 slowdown: float = 1.0, server_device: torch.device | str = "cpu", codec_repeats: int = 5,
                 key: dict[str, Any] | None = None) -> Profiles:
    """``Profiles`` of ``cuts`` (the first full offloading, the last device-only) from one segment
    profile and the values crossing each cut: the head is the stretches before the cut times
    ``slowdown``, the tail the stretches after it; bytes and codec times come from ``codec`` on
    ``crossings`` (one image), so every codec shares the same measured computation."""
    slowdown = check_slowdown(slowdown)
    if [c.name for c in cuts] != segments.cuts:
        raise ConfigError(f"segment profile is of cuts {segments.cuts}, not {[c.name for c in cuts]}; measure it again")
    server_device = torch.device(server_device)
    last = len(cuts) - 1
    profiled = []
    for k, (cut, values) in enumerate(zip(cuts, crossings)):
        head = {b: segments.head(k, b) for b in segments.batch_sizes}
        tail = {b: segments.tail(k, b) for b in segments.batch_sizes}
        flops = {"head_flops": getattr(cut, "head_flops", None), "tail_flops": getattr(cut, "tail_flops", None)}
        head_s = {b: slowdown * m for b, (m, _) in head.items()}
        head_spread = {b: slowdown * s for b, (_, s) in head.items()}
        if k == last:
            zero = {b: 0.0 for b in segments.batch_sizes}
            profiled.append(CutProfile(cut.index, cut.name, 0, 0, head_s, zero, 0.0, 0.0, head_spread, dict(zero),
                                       is_device_only=True, **flops))
            continue
        encoded = _encode_all(values, codec)
        encode_s = _median_time(lambda values=values: _encode_all(values, codec), codec_repeats, torch.device("cpu"))
        decode_s = _median_time(lambda encoded=encoded: _decode_all(encoded, server_device), codec_repeats,
                                server_device)
        profiled.append(CutProfile(cut.index, cut.name, _payload_bytes(encoded), _output_bytes(crossings[last]), head_s,
                                   {b: m for b, (m, _) in tail.items()}, encode_s, decode_s, head_spread,
                                   {b: s for b, (_, s) in tail.items()}, is_full_offload=k == 0, **flops))
    return Profiles(key=dict(key or {}), cuts=profiled)
