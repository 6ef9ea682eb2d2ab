"""Segment profiles: a model's forward pass timed in the stretches between consecutive candidate cuts.

One pass per batch size times every candidate at once: a cut's head time is the sum of the
stretches before it, its tail time the sum of those after it. This is how the paper-style sweeps
profile big models (VGG-16 at 384 px is ~45 GFLOPs an image) at several batch sizes within minutes,
and it keeps heads in order: a deeper cut's head is never timed faster than a shallower one's.
The stretches run as the plan's segment modules (``SplitPlan.segment``), compiled like any head or
tail. The head and the tail here run on the same hardware; a device that is ``slowdown`` times
slower is modelled by scaling the head (:func:`cut_profiles`).

Times are each stretch's fastest pass (see :meth:`SegmentProfile.fastest`), spreads the
interquartile range over passes. Repeats adapt to noise: after ``repeats`` passes at a batch size,
more are run (up to ``max_repeats``) while some head or tail time has an interquartile range above
``max_rel_iqr`` of the whole pass.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from splitcomp.errors import ConfigError
from splitcomp.files import atomic_write_text
from splitcomp.link.codecs import Codec
from splitcomp.profile.latency import CutProfile, Profiles
from splitcomp.profile.profiler import _decode_all, _encode_all, _output_bytes, _payload_bytes
from splitcomp.profile.timing import check_slowdown, measure, median_and_spread, synchronize, torch_threads

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

    def fastest(self, batch: int) -> list[float]:
        """Each stretch's fastest pass: the hardware's own time (on a shared machine other work
        slows some passes down, and short passes are spared more often than long ones, so medians
        would favour small batches; no pass runs faster than the hardware)."""
        return [min(times) for times in zip(*self.samples[batch])]

    def _spread(self, index: int, batch: int, head: bool) -> float:
        sums = [sum(stretches[:index] if head else stretches[index:]) for stretches in self.samples[batch]]
        return median_and_spread(sums)[1]

    def head(self, index: int, batch: int) -> tuple[float, float]:
        """(time, spread) from the input to cut ``index``: the sum of the stretches' fastest passes,
        and the interquartile range of the passes' sums."""
        return sum(self.fastest(batch)[:index]), self._spread(index, batch, head=True)

    def tail(self, index: int, batch: int) -> tuple[float, float]:
        """(time, spread) from cut ``index`` to the output, as :meth:`head`."""
        return sum(self.fastest(batch)[index:]), self._spread(index, batch, head=False)

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


def _batch_of(example: torch.Tensor, batch: int) -> torch.Tensor:
    one = example[:1]
    return one.expand(batch, *one.shape[1:]).contiguous()


def segment_modules(plan: Any, cuts: Sequence[Any], device: torch.device) -> list[nn.Module]:
    """The model between consecutive ``cuts``, one module per stretch, on ``device``."""
    modules = [plan.segment(start, end).eval() for start, end in zip(cuts, cuts[1:])]
    return modules if device.type == "cpu" else [copy.deepcopy(m).to(device) for m in modules]


def _timed_pass(modules: Sequence[nn.Module], inputs: torch.Tensor, device: torch.device,
                clock: Callable[[], float]) -> list[float]:
    values: tuple[Any, ...] = (inputs,)
    synchronize(device)
    stamps = [clock()]
    for module in modules:
        values = module(values)
        synchronize(device)
        stamps.append(clock())
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


def _wants_more(runs: list[list[float]], repeats: int, max_repeats: int, max_rel_iqr: float) -> bool:
    return len(runs) < repeats or (len(runs) < max_repeats and _widest_rel_iqr(runs) > max_rel_iqr)


def time_segments(plan: Any, example: torch.Tensor, cuts: Sequence[Any], batch_sizes: Sequence[int],
                  device: torch.device | str = "cpu", threads: int | None = 1, warmup: int = 1, repeats: int = 3,
                  max_repeats: int = 9, max_rel_iqr: float = 0.05, clock: Callable[[], float] = time.perf_counter,
                  progress: bool = True) -> SegmentProfile:
    """Time the model on ``example`` (its first image repeated to each batch size) in the stretches
    between consecutive ``cuts`` (in plan order, usually ``plan.candidates``, the first of them the
    input cut). Each round runs one pass per batch size still wanting one, so a slow spell on a
    shared machine hits every batch size alike rather than one of them."""
    if repeats < 1 or warmup < 0 or max_repeats < repeats:
        raise ConfigError(f"repeats={repeats}, warmup={warmup}, max_repeats={max_repeats}; "
                          "use repeats >= 1, warmup >= 0 and max_repeats >= repeats")
    if not cuts or cuts[0].name != "input":
        raise ConfigError("segment timing starts at the input cut; pass plan.candidates or cuts from plan.cuts[0] on")
    device = torch.device(device)
    modules = segment_modules(plan, cuts, device)
    sizes = sorted({int(b) for b in batch_sizes})
    inputs = {b: _batch_of(example, b).to(device) for b in sizes}
    samples: dict[int, list[list[float]]] = {b: [] for b in sizes}
    bar = tqdm(total=len(sizes) * repeats, desc="segment timing", unit="pass", disable=not progress, leave=False)
    with torch.inference_mode(), torch_threads(threads):
        for b in sizes:
            for _ in range(warmup):
                _timed_pass(modules, inputs[b], device, clock)
        while pending := [b for b in sizes if _wants_more(samples[b], repeats, max_repeats, max_rel_iqr)]:
            for b in pending:
                samples[b].append(_timed_pass(modules, inputs[b], device, clock))
                bar.update()
    bar.close()
    return SegmentProfile(cuts=[c.name for c in cuts], samples=samples)


def crossing_values(plan: Any, example: torch.Tensor, cuts: Sequence[Any]) -> list[tuple[Any, ...]]:
    """What crosses each of ``cuts`` (from the input cut on) for the first image of ``example``."""
    values: tuple[Any, ...] = (example[:1],)
    crossings = [values]
    with torch.inference_mode():
        for module in segment_modules(plan, cuts, torch.device("cpu")):
            values = module(values)
            crossings.append(values)
    return crossings


def scale_heads(profiles: Profiles, slowdown: float) -> Profiles:
    """The same profiles with every head time (and its spread) ``slowdown`` times longer: one
    measured profile stands for devices of any speed relative to the hardware it was timed on."""
    slowdown = check_slowdown(slowdown)
    cuts = [replace(c, head_s={b: slowdown * t for b, t in c.head_s.items()},
                    head_spread_s={b: slowdown * t for b, t in c.head_spread_s.items()}) for c in profiles.cuts]
    return Profiles(key={**profiles.key, "slowdown": slowdown * profiles.key.get("slowdown", 1.0)}, cuts=cuts)


def cut_profiles(segments: SegmentProfile, cuts: Sequence[Any], crossings: Sequence[tuple[Any, ...]], codec: Codec,
                 slowdown: float = 1.0, server_device: torch.device | str = "cpu", codec_repeats: int = 5,
                 key: dict[str, Any] | None = None) -> Profiles:
    """``Profiles`` of ``cuts`` (the first full offloading, the last device-only) from one segment
    profile and the values crossing each cut: the head is the stretches before the cut times
    ``slowdown``, the tail the stretches after it; bytes and codec times come from ``codec`` on
    ``crossings`` (one image), so every codec shares the same measured computation."""
    if [c.name for c in cuts] != segments.cuts:
        raise ConfigError(f"segment profile is of cuts {segments.cuts}, not {[c.name for c in cuts]}; measure it again")
    server_device = torch.device(server_device)
    last = len(cuts) - 1
    profiled = []
    for k, (cut, values) in enumerate(zip(cuts, crossings)):
        head = {b: segments.head(k, b) for b in segments.batch_sizes}
        tail = {b: segments.tail(k, b) for b in segments.batch_sizes}
        flops = {"head_flops": getattr(cut, "head_flops", None), "tail_flops": getattr(cut, "tail_flops", None)}
        head_s = {b: m for b, (m, _) in head.items()}
        head_spread = {b: s for b, (_, s) in head.items()}
        if k == last:
            zero = {b: 0.0 for b in segments.batch_sizes}
            profiled.append(CutProfile(cut.index, cut.name, 0, 0, head_s, zero, 0.0, 0.0, head_spread, dict(zero),
                                       is_device_only=True, **flops))
            continue
        encoded = _encode_all(values, codec)
        encode_s = statistics.median(measure(lambda values=values: _encode_all(values, codec), 1, codec_repeats))
        decode_s = statistics.median(measure(lambda encoded=encoded: _decode_all(encoded, server_device), 1,
                                             codec_repeats, server_device))
        profiled.append(CutProfile(cut.index, cut.name, _payload_bytes(encoded), _output_bytes(crossings[last]), head_s,
                                   {b: m for b, (m, _) in tail.items()}, encode_s, decode_s, head_spread,
                                   {b: s for b, (_, s) in tail.items()}, is_full_offload=k == 0, **flops))
    return scale_heads(Profiles(key=dict(key or {}), cuts=profiled), slowdown)


@dataclass(frozen=True)
class SplitAgreement:
    """Segment timing against the real head and tail modules of one split, at batch 1 (fastest passes, s)."""

    cut: str
    head_s: float
    tail_s: float
    segment_head_s: float
    segment_tail_s: float

    @property
    def error_pct(self) -> float:
        """The larger of the head and tail differences, in % of the whole model's time."""
        worst = max(abs(self.segment_head_s - self.head_s), abs(self.segment_tail_s - self.tail_s))
        return 100.0 * worst / (self.head_s + self.tail_s)


def split_agreement(plan: Any, cuts: Sequence[Any], cut: Any, example: torch.Tensor, device: torch.device | str = "cpu",
                    threads: int | None = 1, rounds: int = 5,
                    clock: Callable[[], float] = time.perf_counter) -> SplitAgreement:
    """Time ``plan.split(cut)``'s head and tail and a segment pass over ``cuts`` (which include
    ``cut``) in alternation, so a slow spell on a shared machine hits both ways of measuring."""
    device = torch.device(device)
    k = [c.name for c in cuts].index(cut.name)
    modules = segment_modules(plan, cuts, device)
    head, tail = (m if device.type == "cpu" else copy.deepcopy(m).to(device) for m in plan.split(cut))
    x = example[:1].to(device)
    times: dict[str, list[float]] = {"head": [], "tail": [], "segment_head": [], "segment_tail": []}

    def timed(fn: Callable[[], Any]) -> float:
        synchronize(device)
        start = clock()
        fn()
        synchronize(device)
        return clock() - start

    with torch.inference_mode(), torch_threads(threads):
        values = head(x)
        tail(values)
        _timed_pass(modules, x, device, clock)  # warm-up
        for _ in range(rounds):
            times["head"].append(timed(lambda: head(x)))
            times["tail"].append(timed(lambda: tail(values)))
            stretches = _timed_pass(modules, x, device, clock)
            times["segment_head"].append(sum(stretches[:k]))
            times["segment_tail"].append(sum(stretches[k:]))
    fastest = {f"{name}_s": min(t) for name, t in times.items()}
    return SplitAgreement(cut=cut.name, **fastest)
