"""Rules that pick the natural bottlenecks among a model's cuts (config group ``bottleneck/``).

A rule sees every cut (``cuts[0]`` the input cut, ``cuts[-1]`` the output cut) and returns the
intermediate cuts it keeps; the input and output cuts are always candidates anyway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitcomp.split.plan import Cut


class BottleneckRule(ABC):
    """Base of all rules."""

    @abstractmethod
    def select(self, cuts: Sequence[Cut], input_raw_bytes: int) -> list[Cut]:
        """The natural bottlenecks among ``cuts[1:-1]``, in order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PaperRule(BottleneckRule):
    """A cut is a natural bottleneck when it is smaller than the input and than every earlier
    bottleneck kept (a strictly falling sequence), sizes measured in tensor elements."""

    def size(self, cut: Cut) -> int:
        return cut.elements

    def input_size(self, input_cut: Cut, input_raw_bytes: int) -> int:
        return input_cut.elements

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int) -> list[Cut]:
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

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int) -> list[Cut]:
        return [cut for cut in cuts[1:-1] if cut.single_tensor]


class AllCutsRule(BottleneckRule):
    """Every intermediate cut."""

    def select(self, cuts: Sequence[Cut], input_raw_bytes: int) -> list[Cut]:
        return list(cuts[1:-1])
