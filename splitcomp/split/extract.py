"""Head and tail modules for one cut, and segment modules between two cuts, cut out of the traced graph.

The head takes the model's inputs and returns a tuple of the crossing values; the tail takes that
tuple and returns the model's output; a segment takes one cut's tuple and returns the next one's.
Static nodes (weights and what is computed from them only) are copied into every part that uses
them. All parts share the model's parameters.
"""

from __future__ import annotations

import operator
from typing import Any

from torch import fx

from splitcomp.split.cuts import GraphOrder


def _copy(graph: fx.Graph, n: fx.Node, env: dict[fx.Node, Any]) -> None:
    env[n] = graph.node_copy(n, lambda a: env[a])


def build_head(gm: fx.GraphModule, order: GraphOrder, position: int, crossing: tuple[fx.Node, ...]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in order.nodes[: position + 1]:
        span = order.span(n)
        if n.op == "placeholder" or (span is not None and span[0] <= position):
            _copy(graph, n, env)
    graph.output(tuple(env[v] for v in crossing))
    return fx.GraphModule(gm, graph, "Head")


def build_tail(gm: fx.GraphModule, order: GraphOrder, position: int, crossing: tuple[fx.Node, ...]) -> fx.GraphModule:
    graph = fx.Graph()
    values = graph.placeholder("values")
    env: dict[fx.Node, Any] = {v: graph.call_function(operator.getitem, (values, i)) for i, v in enumerate(crossing)}
    for n in order.nodes:
        if n in env or n.op == "placeholder":
            continue
        span = order.span(n)
        if n.op == "output" or (span is not None and span[1] > position):
            _copy(graph, n, env)
    return fx.GraphModule(gm, graph, "Tail")


def build_segment(gm: fx.GraphModule, order: GraphOrder, start: int, start_crossing: tuple[fx.Node, ...], end: int,
                  end_crossing: tuple[fx.Node, ...]) -> fx.GraphModule:
    """The work between the cut after position ``start`` and the cut after ``end`` (``start < end``):
    takes the tuple crossing the first cut, returns the tuple crossing the second."""
    graph = fx.Graph()
    values = graph.placeholder("values")
    env: dict[fx.Node, Any] = {v: graph.call_function(operator.getitem, (values, i))
                               for i, v in enumerate(start_crossing)}
    static = []
    for n in order.nodes[: end + 1]:
        if n in env or n.op == "placeholder":
            continue
        span = order.span(n)
        if span is not None and span[1] > start and span[0] <= end:
            _copy(graph, n, env)
            if n in order.static:
                static.append(env[n])
    graph.output(tuple(env[v] for v in end_crossing))
    for copied in reversed(static):  # weights whose uses all lie before and after the stretch
        if not copied.users:
            graph.erase_node(copied)
    return fx.GraphModule(gm, graph, "Segment")
