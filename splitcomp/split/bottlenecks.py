"""Rules that pick the natural bottlenecks among a model's cuts (config group ``bottleneck/``).

A rule sees every cut (``cuts[0]`` the input cut, ``cuts[-1]`` the output cut) and the model, and
returns the intermediate cuts it keeps; the input and output cuts are always candidates anyway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.split.cuts import Cut


class BottleneckRule(ABC):
    """Base of all rules."""

    @abstractmethod
    def select(self, cuts: Sequence[Cut], input_raw_bytes: int, model: nn.Module | None = None) -> list[Cut]:
        """The natural bottlenecks among ``cuts[1:-1]``, in order (``model``: the analysed model, for
        rules that look at its module structure)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PaperRule(BottleneckRule):
    """A cut is a natural bottleneck when it is smaller than the input and than every earlier
    bottleneck kept (a strictly falling sequence), sizes measured in tensor elements."""

    def size(self, cut: Cut) -> int:
        return cut.elements

    def input_size(self, input_cut: Cut, input_raw_bytes: int) -> int:
        return input_cut.elements

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int, model: nn.Module | None = None) -> list[Cut]:
        limit = self.input_size(cuts[0], input_raw_bytes)
        kept = []
        for cut in cuts[1:-1]:
            size = self.size(cut)
            if size < limit:
                kept.append(cut)
                limit = size
        return kept


class BytesRule(PaperRule):
    """The paper rule on the bytes actually sent under the codec; the input counts at its own
    dtype (one byte per element for uint8 images), as full offloading would send it."""

    def size(self, cut: Cut) -> int:
        return cut.bytes

    def input_size(self, input_cut: Cut, input_raw_bytes: int) -> int:
        return input_raw_bytes


class SingleTensorRule(BottleneckRule):
    """Every intermediate cut that exactly one tensor crosses."""

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int, model: nn.Module | None = None) -> list[Cut]:
        return [cut for cut in cuts[1:-1] if cut.single_tensor]


class AllCutsRule(BottleneckRule):
    """Every intermediate cut."""

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int, model: nn.Module | None = None) -> list[Cut]:
        return list(cuts[1:-1])


# --- block outputs -------------------------------------------------------------------------------

_CONTAINERS = (nn.Sequential, nn.ModuleList)
_POOLING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def default_blocks(model: nn.Module) -> list[str]:
    """Module paths that count as blocks when no patterns are given, in module order.

    A block is a child of a ``Sequential``/``ModuleList`` that is itself made of modules (an
    EfficientNet stage and each MBConv in it, a ViT encoder layer, a ResNet bottleneck), or a pooling
    layer in such a container (in VGG's flat ``features`` each MaxPool closes a block). A block
    that is a container holds blocks in turn; the internals of any other block are not blocks."""
    blocks: list[str] = []

    def visit(module: nn.Module, path: str) -> None:
        in_container = isinstance(module, _CONTAINERS)
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            is_block = in_container and (next(child.children(), None) is not None or isinstance(child, _POOLING))
            if is_block:
                blocks.append(child_path)
            if not is_block or isinstance(child, _CONTAINERS):
                visit(child, child_path)

    visit(model, "")
    return blocks


def matches(path: str, pattern: str) -> bool:
    """``fnmatch`` part by part: ``features.*`` matches ``features.3`` but not ``features.3.0``."""
    parts, wanted = path.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(fnmatchcase(p, w) for p, w in zip(parts, wanted))


class BlockOutputsRule(BottleneckRule):
    """Natural bottlenecks among block outputs only, as Bakhtiarnia et al. choose them: a cut is
    a candidate when the forward of a block ends there (a module boundary, so exactly the block's
    output crosses), and a natural bottleneck when its compression, tensor elements crossing over
    the input's elements, is below ``max_compression``.

    ``blocks``: module path patterns (``fnmatch`` per dotted part, e.g.
    ``backbone.encoder.layers.*``); None = :func:`default_blocks`. ``falling``: also require fewer
    elements than at every earlier bottleneck kept (the :class:`PaperRule` sequence)."""

    def __init__(self, blocks: Sequence[str] | None = None, max_compression: float = 1.0,
                 falling: bool = False) -> None:
        if not float(max_compression) > 0:
            raise ConfigError(f"bottleneck.max_compression={max_compression}; use a positive ratio such as 1.0")
        self.blocks = [str(b) for b in blocks] if blocks is not None else None
        self.max_compression = float(max_compression)
        self.falling = bool(falling)

    def block_paths(self, model: nn.Module) -> list[str]:
        if self.blocks is None:
            return default_blocks(model)
        paths = [path for path, _ in model.named_modules() if any(matches(path, b) for b in self.blocks)]
        if not paths:
            raise ConfigError(f"bottleneck.blocks {self.blocks} match no module of {type(model).__name__}; "
                              "use module paths as model.named_modules() spells them, * for any one part")
        return paths

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int, model: nn.Module | None = None) -> list[Cut]:
        if model is None:
            raise ConfigError("the block-output rule needs the model to find its blocks; use splitcomp.split.analyze")
        blocks = set(self.block_paths(model))
        limit = self.max_compression * cuts[0].elements
        kept = []
        for cut in cuts[1:-1]:
            if blocks.intersection(cut.ends_modules) and cut.elements < limit:
                kept.append(cut)
                if self.falling:
                    limit = cut.elements
        return kept

    def __repr__(self) -> str:
        blocks = "default" if self.blocks is None else self.blocks
        return f"BlockOutputsRule(blocks={blocks}, max_compression={self.max_compression:g}, falling={self.falling})"
