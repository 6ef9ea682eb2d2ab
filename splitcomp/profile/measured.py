"""Profiles with the record of how they were measured: the machine's load, the cuts re-measured,
and what the check found. The record is saved beside the profiles in their JSON file (files
without it still load as plain :class:`~splitcomp.profile.latency.Profiles`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from splitcomp.errors import ConfigError
from splitcomp.profile.latency import Profiles
from splitcomp.profile.machine import MachineLoad


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Measurement:
    """How one profile was measured and what its check found."""

    load: MachineLoad
    measured_at: str = field(default_factory=now_utc)  # ISO 8601, UTC
    remeasured: list[list[str]] = field(default_factory=list)  # cut names re-measured, per round
    problems: list[str] = field(default_factory=list)  # what the check found in the kept times (empty: passed)
    checked: bool = True  # whether profile.check was on (off: problems were accepted knowingly)

    def as_params(self) -> dict[str, Any]:
        """Flat values for MLflow params."""
        verdict = "passed" if not self.problems else ("refused" if self.checked else "failed, accepted")
        rounds = " | ".join(",".join(names) for names in self.remeasured)
        return {**self.load.as_params("profile_load."), "profile_check": verdict,
                "profile_remeasured": rounds or "none", "profile_measured_at": self.measured_at}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "load": self.load.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(load=MachineLoad.from_dict(dict(data["load"])), measured_at=str(data["measured_at"]),
                   remeasured=[list(map(str, names)) for names in data.get("remeasured", [])],
                   problems=list(map(str, data.get("problems", []))), checked=bool(data.get("checked", True)))


@dataclass
class MeasuredProfiles(Profiles):
    """:class:`Profiles` plus their :class:`Measurement` (None where unknown; not compared)."""

    measurement: Measurement | None = field(default=None, compare=False)

    def to_json(self) -> str:
        data = json.loads(super().to_json())
        if self.measurement is not None:
            data["measurement"] = self.measurement.to_dict()
        return json.dumps(data, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> MeasuredProfiles:
        profiles = super().from_json(text)
        raw = json.loads(text).get("measurement")
        if raw is not None:
            try:
                profiles.measurement = Measurement.from_dict(raw)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"the profiles file has a bad measurement record ({exc!r}); "
                                  "re-create it with splitcomp-profile") from None
        return profiles  # type: ignore[return-value]
