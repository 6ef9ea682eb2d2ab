"""Cut enumeration and accounting over a traced graph, in one linear sweep.

A cut after node ``k`` of the graph's (topological) order sends every value produced at or before
``k`` and used after ``k``. Two kinds of node never cross:

* *static* nodes depend on no input (parameters, buffers, constants and anything computed only from
  them); they are recomputed on whichever side needs them, so they exist on both sides;
* nodes nobody uses.

Plain Python values (``n = x.size(0)``) do cross, as small carried values worth 0 bytes. A cut that
some other non-tensor value crosses (a tuple of tensors between an op and its ``getitem``) is not
offered. Cuts after static nodes are not offered either: they equal the cut before them.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import fx, nn

from splitcomp.split.measure import OTHER, TENSOR, NodeStats

_CALLS = ("call_function", "call_method", "call_module")
_RANDOM_NAMES = ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
                 "bernoulli", "multinomial", "normal", "poisson", "dropout")
_IN_PLACE_OPERATORS = ("iadd", "isub", "imul", "imatmul", "itruediv", "ifloordiv", "imod", "ipow",
                       "iand", "ior", "ixor", "ilshift", "irshift", "iconcat")


@dataclass(frozen=True)
class Cut:
    """One place to split the model. FLOPs count 2 per multiply-add (see ``splitcomp.split.measure``);
    parameter bytes include buffers, and a weight used on both sides counts on both."""

    index: int  # position in plan.cuts
    name: str  # "input", "output", or the fx node the cut follows
    crossing: tuple[str, ...]  # names of the values sent (tensors and small plain values)
    elements: int  # tensor elements crossing
    bytes: int  # bytes crossing under the plan's codec
    head_flops: int
    tail_flops: int
    head_param_bytes: int
    tail_param_bytes: int
    single_tensor: bool  # exactly one tensor crosses (plain values aside)
    ends_modules: tuple[str, ...] = ()  # paths of the modules whose output this cut sends (outermost first)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GraphOrder:
    """Positions of the graph's nodes and the side(s) each node's work and weights belong to."""

    nodes: list[fx.Node]
    position: dict[fx.Node, int]
    static: set[fx.Node]
    use_range: dict[fx.Node, tuple[int, int]]  # static node -> (first, last) position of its non-static uses

    def span(self, n: fx.Node) -> tuple[int, int] | None:
        """(first, last) position where the node's work happens; static nodes run where they are used."""
        if n in self.static:
            return self.use_range.get(n)
        return self.position[n], self.position[n]


@dataclass(frozen=True)
class CutRecord:
    """One offered cut before it becomes a public ``Cut``: the graph position it follows and its figures."""

    position: int
    name: str  # the node the cut follows
    crossing: tuple[fx.Node, ...]
    elements: int
    nbytes: int
    tensors: int
    head_flops: int
    tail_flops: int
    head_param_bytes: int
    tail_param_bytes: int
    ends_modules: tuple[str, ...] = ()  # modules whose forward ends with the node the cut follows


def _target_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")


def _may_recompute(n: fx.Node) -> bool:
    """Pure enough to run twice with the same result: not random, not in-place."""
    name = _target_name(n)
    in_place = (name.endswith("_") and not name.endswith("__")) or (
        n.op == "call_function" and name in _IN_PLACE_OPERATORS and getattr(operator, name) is n.target)
    return not in_place and name not in _RANDOM_NAMES


def order_graph(graph: fx.Graph) -> GraphOrder:
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    static: set[fx.Node] = set()
    for n in nodes:
        if n.op == "get_attr" or (n.op in _CALLS and _may_recompute(n)
                                  and all(a in static for a in n.all_input_nodes)):
            static.add(n)
    use_range: dict[fx.Node, tuple[int, int]] = {}
    for n in reversed(nodes):
        if n in static:
            uses = [use_range[u] if u in static else (position[u], position[u]) for u in n.users]
            uses = [u for u in uses if u is not None]
            if uses:
                use_range[n] = (min(u[0] for u in uses), max(u[1] for u in uses))
    return GraphOrder(nodes, position, static, use_range)


def cut_positions(order: GraphOrder) -> list[int]:
    """The input cut (after the last placeholder) and a cut after every non-static computing node."""
    placeholders = [order.position[n] for n in order.nodes if n.op == "placeholder"]
    last_placeholder = max(placeholders) if placeholders else -1
    rest = [order.position[n] for n in order.nodes
            if n.op in _CALLS and n not in order.static and order.position[n] > last_placeholder]
    return [last_placeholder, *rest]


def enumerate_cuts(gm: fx.GraphModule, order: GraphOrder, stats: dict[fx.Node, NodeStats]) -> list[CutRecord]:
    """Every offered cut with its crossing values, bytes, FLOPs and weight bytes on each side."""
    positions = cut_positions(order)
    crossings = _crossings(order, positions)
    head_flops, tail_flops = _side_sums(order, positions, _node_flops(order, stats))
    head_params, tail_params = _side_sums(order, positions, _weight_spans(gm, order))
    ends = module_ends(order)
    records = []
    for i, (k, crossing) in enumerate(zip(positions, crossings)):
        kinds = [stats[v].kind for v in crossing]
        if OTHER in kinds:
            continue
        records.append(CutRecord(
            position=k, name=order.nodes[k].name if k >= 0 else "input", crossing=crossing,
            elements=sum(stats[v].elements for v in crossing), nbytes=sum(stats[v].nbytes for v in crossing),
            tensors=kinds.count(TENSOR), head_flops=head_flops[i], tail_flops=tail_flops[i],
            head_param_bytes=head_params[i], tail_param_bytes=tail_params[i], ends_modules=ends.get(k, ())))
    return records


def module_ends(order: GraphOrder) -> dict[int, tuple[str, ...]]:
    """Position -> paths of the modules whose forward ends there: the last computing node the tracer
    recorded inside each module (``nn_module_stack``), i.e. where the module's output is made."""
    last: dict[str, int] = {}
    for n in order.nodes:
        if n.op not in _CALLS or n in order.static:
            continue
        for key, scope in (n.meta.get("nn_module_stack") or {}).items():
            last[scope[0] if isinstance(scope, tuple) else key] = order.position[n]
    ends: dict[int, list[str]] = {}
    for path, position in last.items():
        ends.setdefault(position, []).append(path)
    return {position: tuple(paths) for position, paths in ends.items()}


def _crossings(order: GraphOrder, positions: list[int]) -> list[tuple[fx.Node, ...]]:
    """For each cut position, the values alive across it, in production order (a sweep, not a scan)."""
    starts: list[list[fx.Node]] = [[] for _ in positions]
    ends: list[list[fx.Node]] = [[] for _ in positions]
    for n in order.nodes:
        if n in order.static or n.op == "output" or not n.users:
            continue
        first = bisect.bisect_left(positions, order.position[n])
        stop = bisect.bisect_left(positions, max(order.position[u] for u in n.users))
        if first < stop:  # alive across the cuts first .. stop-1
            starts[first].append(n)
            ends[stop - 1].append(n)
    alive: dict[fx.Node, None] = {}  # insertion-ordered set
    result = []
    for i in range(len(positions)):
        alive.update(dict.fromkeys(starts[i]))
        result.append(tuple(alive))
        for n in ends[i]:
            del alive[n]
    return result


def _node_flops(order: GraphOrder, stats: dict[fx.Node, NodeStats]) -> list[tuple[tuple[int, int], int]]:
    spans = []
    for n, s in stats.items():
        span = order.span(n)
        if s.flops and span is not None:
            spans.append((span, s.flops))
    return spans


def _weight_spans(gm: fx.GraphModule, order: GraphOrder) -> list[tuple[tuple[int, int], int]]:
    """((first, last) use position, bytes) of every parameter, buffer and tensor constant, shared ones once."""
    spans: dict[int, tuple[int, int]] = {}
    sizes: dict[int, int] = {}
    for n in order.nodes:
        span = order.span(n) if n.op in ("get_attr", "call_module") else None
        if span is None:
            continue
        for tensor in _weights_of(gm, n):
            key = id(tensor)
            old = spans.get(key, span)
            spans[key] = (min(old[0], span[0]), max(old[1], span[1]))
            sizes[key] = tensor.numel() * tensor.element_size()
    return [(spans[key], sizes[key]) for key in spans]


def _weights_of(gm: fx.GraphModule, n: fx.Node) -> list[torch.Tensor]:
    if n.op == "call_module":
        module = gm.get_submodule(n.target)
        return [*module.parameters(), *module.buffers()]
    value: Any = gm
    for part in n.target.split("."):
        value = getattr(value, part)
    if isinstance(value, nn.Module):
        return [*value.parameters(), *value.buffers()]
    return [value] if isinstance(value, torch.Tensor) else []


def _side_sums(order: GraphOrder, positions: list[int],
               items: list[tuple[tuple[int, int], int]]) -> tuple[list[int], list[int]]:
    """Per cut: the sum of items used at or before it (head) and of items used after it (tail).

    An item used on both sides counts on both.
    """
    size = len(order.nodes)
    by_first = [0] * size
    by_last = [0] * size
    for (first, last), amount in items:
        by_first[first] += amount
        by_last[last] += amount
    head_upto = list(accumulate(by_first))
    last_upto = list(accumulate(by_last))
    total = last_upto[-1] if last_upto else 0
    head = [head_upto[k] if k >= 0 else 0 for k in positions]
    tail = [total - (last_upto[k] if k >= 0 else 0) for k in positions]
    return head, tail
