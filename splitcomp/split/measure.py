"""One interpretation of the traced graph on the example input: what every node produces.

For each node we keep the kind of value (tensor, small plain value, or something that cannot
cross a cut such as a tuple of tensors), its tensor elements, its bytes under the codec and the
FLOPs it costs. FLOPs are those of ``torch.utils.flop_counter`` (2 per multiply-add, counted for
convolutions and matrix products; elementwise work is not counted). ``nn.MultiheadAttention`` is
counted by formula, because its fused inference kernel hides its matrix products from the counter
(a bare ``scaled_dot_product_attention`` call may count 0 on the CPU for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from splitcomp.errors import ModelError
from splitcomp.link.codecs import Codec

TENSOR, PLAIN, OTHER = "tensor", "plain", "other"

_PLAIN_SCALARS = (type(None), bool, int, float, str)


def value_kind(value: Any) -> str:
    """``tensor``, ``plain`` (None, numbers, strings, sizes and tuples/lists of them) or ``other``."""
    if isinstance(value, torch.Tensor):
        return TENSOR
    if isinstance(value, _PLAIN_SCALARS):
        return PLAIN
    if isinstance(value, (tuple, list)) and all(value_kind(v) == PLAIN for v in value):
        return PLAIN
    return OTHER


@dataclass(frozen=True)
class NodeStats:
    kind: str
    elements: int  # tensor elements (0 for plain values)
    nbytes: int  # bytes under the codec (0 for plain values)
    flops: int


class _MeasuringInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, codec: Codec, counter: FlopCounterMode) -> None:
        super().__init__(gm)
        self.codec = codec
        self.counter = counter
        self.stats: dict[fx.Node, NodeStats] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        try:
            value = super().run_node(n)
        except Exception as exc:
            raise ModelError(_run_failure_message(n, exc)) from exc
        flops = self.counter.get_total_flops() - before
        if n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.MultiheadAttention):
            flops = attention_flops(self.module.get_submodule(n.target), *self.fetch_args_kwargs_from_env(n))
        self.stats[n] = self._describe(n, value, flops)
        return value

    def _describe(self, n: fx.Node, value: Any, flops: int) -> NodeStats:
        kind = value_kind(value)
        if kind != TENSOR:
            return NodeStats(kind, 0, 0, flops)
        nbytes = self.codec.nbytes(value) if n.users else 0  # a value nobody uses never crosses
        return NodeStats(kind, value.numel(), nbytes, flops)


def _run_failure_message(n: fx.Node, exc: Exception) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    module = f" (module '{n.target}')" if n.op == "call_module" else ""
    return (f"the model failed on the example input at node '{n.name}'{module}: {reason}; "
            "check the example input's shape, dtype and device against what the model expects")


def measure(gm: fx.GraphModule, example_inputs: tuple[Any, ...], codec: Codec) -> dict[fx.Node, NodeStats]:
    """Run the graph once on the example inputs and describe every node's value."""
    counter = FlopCounterMode(display=False)
    interpreter = _MeasuringInterpreter(gm, codec, counter)
    with torch.no_grad(), counter:
        interpreter.run(*example_inputs)
    return interpreter.stats


def attention_flops(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """FLOPs (2 per multiply-add) of the projections and both attention products of one call."""
    names = ("query", "key", "value")
    query, key, value = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))
    seq_dim = 1 if module.batch_first and query.dim() == 3 else 0
    batch = query.numel() // (query.shape[seq_dim] * query.shape[-1])
    target_len, source_len, embed = query.shape[seq_dim], key.shape[seq_dim], module.embed_dim
    macs = batch * (
        target_len * query.shape[-1] * embed  # query projection
        + source_len * key.shape[-1] * embed  # key projection
        + source_len * value.shape[-1] * embed  # value projection
        + 2 * target_len * source_len * embed  # scores and weighted sum over all heads
        + target_len * embed * embed  # output projection
    )
    return 2 * macs
