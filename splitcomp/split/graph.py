"""Tracing a model into a torch.fx graph, with user-chosen leaf modules and clear errors."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from splitcomp.errors import ConfigError, ModelError

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _type_names(module: nn.Module) -> set[str]:
    cls = type(module)
    return {cls.__name__, f"{cls.__module__}.{cls.__qualname__}"}


class LeafTracer(fx.Tracer):
    """An fx tracer that keeps the named modules whole and remembers where tracing broke.

    A leaf name is a module type name (``"Bottleneck"``), a fully qualified class name
    (``"torchvision.models.resnet.Bottleneck"``) or a module path in the model (``"layer1.0"``).
    """

    def __init__(self, leaf_modules: Sequence[str] = ()) -> None:
        super().__init__()
        self.leaf_names = set(leaf_modules)
        self.failed_in: tuple[str, str] | None = None  # (module path, type name) of the innermost failure

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or _type_names(m) & self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self._path_or_unknown(m), type(m).__name__)
            raise

    def _path_or_unknown(self, m: nn.Module) -> str:
        try:
            return self.path_of_module(m)
        except NameError:  # a module built inside forward has no path in the hierarchy
            return "<module created in forward>"


def check_leaf_names(model: nn.Module, leaf_modules: Sequence[str]) -> None:
    """Every leaf name must match some module of the model, or the user has a typo."""
    known: set[str] = set()
    for path, module in model.named_modules():
        known.add(path)
        known |= _type_names(module)
    unknown = [name for name in leaf_modules if name not in known]
    if unknown:
        raise ConfigError(f"leaf module name(s) {unknown} match no module of {type(model).__name__}; "
                          "use a module type name such as 'Bottleneck' or a module path such as 'layer1.0'")


def trace(model: nn.Module, leaf_modules: Sequence[str] = ()) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; an untraceable part raises one ModelError naming it and the fix."""
    if isinstance(model, fx.GraphModule) and not leaf_modules:
        return model
    check_leaf_names(model, leaf_modules)
    tracer = LeafTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise ModelError(_trace_failure_message(model, tracer, exc)) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace_failure_message(model: nn.Module, tracer: LeafTracer, exc: Exception) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    where = _model_frame(exc)
    if tracer.failed_in is None:
        part = f"the forward of {type(model).__name__} itself"
        fix = ("make that forward traceable (no Python control flow on tensor values), or wrap the "
               "untraceable code in a submodule and list it in leaf_modules")
    else:
        path, type_name = tracer.failed_in
        part = f"module '{path}' ({type_name})"
        fix = (f"mark it as a leaf so it is kept whole: leaf_modules=['{type_name}'] "
               f"(config: leaf_modules=[{type_name}]) or its path '{path}'")
    return f"torch.fx cannot trace {part}: {reason}{where}; {fix}"


def _model_frame(exc: Exception) -> str:
    """`` at file:line `code` `` of the deepest frame outside torch, where the model code broke."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    frame = frames[-1]
    code = f" `{frame.line.strip()}`" if frame.line else ""
    return f" (at {Path(frame.filename).name}:{frame.lineno}{code})"
