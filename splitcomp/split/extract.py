"""Head and tail modules for one cut, cut out of the traced graph.

The head takes the model's inputs and returns a tuple of the crossing values; the tail takes that
tuple and returns the model's output. Static nodes (weights and what is computed from them only)
are copied into every side that uses them. Both modules share the model's parameters.
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
