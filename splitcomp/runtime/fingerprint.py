"""Model fingerprints: device and server prove they hold the same model before any request."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def architecture_digest(model: nn.Module) -> str:
    """SHA-256 of the module tree as printed (layer types and hyper-parameters)."""
    return hashlib.sha256(repr(model).encode()).hexdigest()


def model_fingerprint(model: nn.Module, input_shape: tuple[int, ...], input_dtype: torch.dtype,
                      codec: Any) -> dict[str, str]:
    """What both sides must agree on for a split prediction to equal the unsplit one."""
    return {
        "architecture": architecture_digest(model)[:16],
        "weights": weights_digest(model)[:16],
        "input": f"{list(input_shape[1:])}:{str(input_dtype).removeprefix('torch.')}",
        "codec": repr(codec),
    }


def describe_mismatch(mine: dict[str, str], theirs: dict[str, Any]) -> str | None:
    """None when the fingerprints agree, else one sentence naming what differs."""
    differing = [key for key in mine if theirs.get(key) != mine[key]]
    if not differing:
        return None
    parts = ", ".join(f"{key} (server {mine[key]!r}, device {theirs.get(key)!r})" for key in differing)
    return (f"device and server hold different models: {parts}; start both with the same model, "
            "weights, dataset.image_size and codec")
