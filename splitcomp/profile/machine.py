"""The machine's load while profiles are measured.

Times measured while other processes compete for the cores are too long, and a cached profile
carries them into every later run. So every measurement records how busy the machine was: the
load average before and after, and (on Linux, from ``/proc/stat``) how many cores other processes
kept busy on average, which is the sharper figure (the load average trails by about a minute).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

# /proc/stat columns after "cpu": user nice system idle iowait irq softirq steal (guest is inside user)
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        return None


def _machine_busy_cpu_s() -> float | None:
    """CPU seconds every process on the machine has used since boot, or None where unknown."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = [int(v) for v in first[1:]]
        return sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Snapshot:
    """Clocks read at one moment: wall, this process's CPU time, the machine's busy CPU time."""

    wall_s: float
    own_cpu_s: float
    busy_cpu_s: float | None
    load_average: float | None

    @classmethod
    def now(cls) -> Snapshot:
        return cls(time.perf_counter(), time.process_time(), _machine_busy_cpu_s(), _load_average())


@dataclass(frozen=True)
class MachineLoad:
    """How busy the machine was over one measurement."""

    cpus: int  # CPUs of this machine
    load_before: float | None  # 1-minute load average when measuring began (None where unknown)
    load_after: float | None  # ... and when it ended
    wall_s: float  # how long measuring took
    own_cpu_s: float  # CPU time this process used meanwhile
    busy_cpu_s: float | None = None  # CPU time all processes used meanwhile; None where unknown

    @classmethod
    def between(cls, start: Snapshot, end: Snapshot) -> MachineLoad:
        busy = None if start.busy_cpu_s is None or end.busy_cpu_s is None else end.busy_cpu_s - start.busy_cpu_s
        return cls(cpus=os.cpu_count() or 1, load_before=start.load_average, load_after=end.load_average,
                   wall_s=end.wall_s - start.wall_s, own_cpu_s=end.own_cpu_s - start.own_cpu_s, busy_cpu_s=busy)

    @property
    def others_cores(self) -> float:
        """Cores other processes kept busy on average while measuring. Without ``/proc/stat``, the
        load average less this process (a coarser, lagging figure)."""
        if self.busy_cpu_s is not None and self.wall_s > 0:
            return max(0.0, (self.busy_cpu_s - self.own_cpu_s) / self.wall_s)
        averages = [v for v in (self.load_before, self.load_after) if v is not None]
        return max(0.0, max(averages, default=0.0) - 1.0)

    @property
    def own_cpu_share(self) -> float:
        """This process's CPU time over wall time: about 1 for a one-thread profile on a core of its
        own, lower when it had to share that core."""
        return self.own_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> str:
        text = f"other processes kept {self.others_cores:.1f} of {self.cpus} CPUs busy"
        if self.load_before is not None and self.load_after is not None:
            text += f" (load average {self.load_before:.2f} -> {self.load_after:.2f})"
        return text

    def is_busy(self, max_others_cores: float) -> bool:
        return self.others_cores > max_others_cores

    def as_params(self, prefix: str) -> dict[str, Any]:
        """Flat values for MLflow params."""
        return {f"{prefix}{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in
                {**asdict(self), "others_cores": self.others_cores, "own_cpu_share": self.own_cpu_share}.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineLoad:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class LoadWatch:
    """``with LoadWatch() as watch: ...``, then ``watch.load`` is the machine's load over the block."""

    def __enter__(self) -> LoadWatch:
        self._start = Snapshot.now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load = MachineLoad.between(self._start, Snapshot.now())
