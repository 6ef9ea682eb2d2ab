"""Model fingerprints: device and server prove they hold the same model before any request."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitcomp.profile.cache import model_digests


def model_fingerprint(model: nn.Module, input_shape: tuple[int, ...], input_dtype: torch.dtype,
                      codec: Any) -> dict[str, str]:
    """What both sides must agree on for a split prediction to equal the unsplit one: the
    architecture and weights (the same digests the profile cache keys on), input and codec."""
    digests = model_digests(model)
    return {
        "architecture": digests["architecture_sha"][:16],
        "weights": digests["weights_sha"][:16],
        "input": f"{list(input_shape[1:])}:{str(input_dtype).removeprefix('torch.')}",
        "codec": repr(codec),
    }


def describe_mismatch(mine: dict[str, str], theirs: dict[str, Any], disclose: bool = False) -> str | None:
    """None when the fingerprints agree, else one sentence naming what differs. The server's own
    values appear only with ``disclose`` (an authenticated peer): to anyone else they would be
    the very thing that passes the handshake of a server without a secret."""
    differing = [key for key in mine if theirs.get(key) != mine[key]]
    if not differing:
        return None
    if disclose:
        parts = ", ".join(f"{key} (server {mine[key]!r}, device {theirs.get(key)!r})" for key in differing)
    else:
        parts = ", ".join(differing)
    return (f"device and server hold different models: {parts}; start both with the same model, "
            "weights, dataset.image_size and codec")
