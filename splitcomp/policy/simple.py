"""Fixed policies: device-only, full offloading, and one static cut."""

from __future__ import annotations

from splitcomp.policy.base import (
    DecisionContext,
    Policy,
    device_only_index,
    full_offload_index,
    resolve_cut,
)


class DeviceOnly(Policy):
    """Run the whole model on the device; nothing crosses the link."""

    name = "device_only"

    def choose(self, ctx: DecisionContext) -> int:
        return device_only_index(ctx.candidates)


class ServerOnly(Policy):
    """Full offloading: send the raw input, run the whole model on the server."""

    name = "server_only"

    def choose(self, ctx: DecisionContext) -> int:
        return full_offload_index(ctx.candidates)


class Static(Policy):
    """Always the same cut, given by candidate name or by position among the candidates."""

    name = "static"

    def __init__(self, cut: str | int) -> None:
        self.cut = cut

    def choose(self, ctx: DecisionContext) -> int:
        return resolve_cut(ctx.candidates, self.cut)
