"""Graph-aware split points: trace a model, enumerate every cut, find its natural bottlenecks and
cut it into a head (end device) and a tail (edge server)."""

from splitcomp.split.bottlenecks import (
    AllCutsRule,
    BlockOutputsRule,
    BottleneckRule,
    BytesRule,
    PaperRule,
    SingleTensorRule,
)
from splitcomp.split.plan import Cut, CutNotFoundError, SplitPlan, analyze

__all__ = [
    "AllCutsRule",
    "BlockOutputsRule",
    "BottleneckRule",
    "BytesRule",
    "Cut",
    "CutNotFoundError",
    "PaperRule",
    "SingleTensorRule",
    "SplitPlan",
    "analyze",
]
