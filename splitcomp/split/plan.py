"""``analyze``: a model's cuts, natural bottlenecks and head/tail modules, as a ``SplitPlan``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from splitcomp.errors import ConfigError
from splitcomp.link.codecs import Codec, RawCodec
from splitcomp.split.bottlenecks import BottleneckRule, PaperRule
from splitcomp.split.cuts import Cut, CutRecord, GraphOrder, enumerate_cuts, order_graph
from splitcomp.split.extract import build_head, build_segment, build_tail
from splitcomp.split.graph import trace
from splitcomp.split.measure import measure


class CutNotFoundError(ConfigError, ValueError):
    """A cut name or index that the plan does not have."""


class SplitPlan:
    """Every cut of a model in topological order, the natural bottlenecks a rule picked among them,
    and head/tail modules for any cut."""

    def __init__(self, gm: fx.GraphModule, order: GraphOrder, records: list[CutRecord], codec: Codec,
                 rule: BottleneckRule, input_raw_bytes: int, analysis_s: float = 0.0,
                 model: nn.Module | None = None) -> None:
        self.graph_module = gm
        self.codec = codec
        self.rule = rule
        self.input_raw_bytes = input_raw_bytes
        self.analysis_s = analysis_s
        self._order = order
        self._records = records
        self.cuts = [_public_cut(i, record, last=len(records) - 1) for i, record in enumerate(records)]
        # the rule sees the model as written (the traced copy keeps used modules only, untyped)
        self.natural_bottlenecks = list(rule.select(self.cuts, input_raw_bytes, model=model or gm))
        natural = {cut.index for cut in self.natural_bottlenecks}
        self.candidates = [cut for cut in self.cuts if cut.index in natural or cut.index in (0, len(self.cuts) - 1)]
        self._by_name = {cut.name: cut for cut in self.cuts}
        self._splits: dict[int, tuple[fx.GraphModule, fx.GraphModule]] = {}

    @property
    def total_flops(self) -> int:
        return self.cuts[-1].head_flops

    def cut(self, name_or_index: Cut | str | int) -> Cut:
        """The cut with this name or index (negative indices count from the end)."""
        if isinstance(name_or_index, Cut):
            return self.cuts[name_or_index.index]
        if isinstance(name_or_index, int) and -len(self.cuts) <= name_or_index < len(self.cuts):
            return self.cuts[name_or_index]
        if isinstance(name_or_index, str) and name_or_index in self._by_name:
            return self._by_name[name_or_index]
        raise CutNotFoundError(
            f"no cut {name_or_index!r} in this model; use an index below {len(self.cuts)} or one of the names "
            f"{_short_list([c.name for c in self.candidates])} (natural bottlenecks; all names: plan.cuts)")

    def split(self, cut: Cut | str | int) -> tuple[fx.GraphModule, fx.GraphModule]:
        """(head, tail): ``head(x)`` returns the tuple of crossing values, ``tail(values)`` the output."""
        index = self.cut(cut).index
        if index not in self._splits:
            record = self._records[index]
            self._splits[index] = (build_head(self.graph_module, self._order, record.position, record.crossing),
                                   build_tail(self.graph_module, self._order, record.position, record.crossing))
        return self._splits[index]

    def segment(self, start: Cut | str | int, end: Cut | str | int) -> fx.GraphModule:
        """The part of the model between two cuts: ``segment(values)`` takes the tuple crossing
        ``start`` (as a head returns it) and returns the tuple crossing ``end``. Chained over
        consecutive cuts, segments compute the whole model, one stretch at a time."""
        first, last = self._records[self.cut(start).index], self._records[self.cut(end).index]
        if first.position >= last.position:
            raise CutNotFoundError(f"segment from {self.cut(start).name!r} to {self.cut(end).name!r}: "
                                   "the first cut must come before the second")
        return build_segment(self.graph_module, self._order, first.position, first.crossing, last.position,
                             last.crossing)

    def __repr__(self) -> str:
        return (f"SplitPlan({type(self.graph_module).__name__}: {len(self.cuts)} cuts, "
                f"{len(self.natural_bottlenecks)} natural bottlenecks under {self.rule!r} / {self.codec!r})")


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _public_cut(index: int, record: CutRecord, last: int) -> Cut:
    name = "input" if index == 0 else "output" if index == last else record.name
    return Cut(index=index, name=name, crossing=tuple(n.name for n in record.crossing), elements=record.elements,
               bytes=record.nbytes, head_flops=record.head_flops, tail_flops=record.tail_flops,
               head_param_bytes=record.head_param_bytes, tail_param_bytes=record.tail_param_bytes,
               single_tensor=record.tensors == 1, ends_modules=record.ends_modules)


def _as_inputs(example_input: Any) -> tuple[Any, ...]:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _raw_bytes(values: tuple[Any, ...]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def analyze(model: nn.Module, example_input: Any, codec: Codec | None = None, rule: BottleneckRule | None = None,
            leaf_modules: Sequence[str] = ()) -> SplitPlan:
    """Trace ``model``, measure every cut on ``example_input`` (a tensor, or a tuple for several
    inputs) and pick the natural bottlenecks with ``rule``.

    The graph follows the model's current mode: call ``model.eval()`` first for inference splits.
    ``leaf_modules`` names modules to keep whole, by type name, qualified class name or module path;
    use it for parts torch.fx cannot trace.
    """
    codec = codec if codec is not None else RawCodec()
    rule = rule if rule is not None else PaperRule()
    start = time.perf_counter()
    gm = trace(model, tuple(str(name) for name in leaf_modules))
    inputs = _as_inputs(example_input)
    stats = measure(gm, inputs, codec)
    order = order_graph(gm.graph)
    records = enumerate_cuts(gm, order, stats)
    return SplitPlan(gm, order, records, codec, rule, _raw_bytes(inputs), time.perf_counter() - start, model=model)
