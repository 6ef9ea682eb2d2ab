"""A process's memory as the kernel counts it: resident set (VmRSS) and its peak (VmHWM); and
the CPU time it used.

Linux only (``/proc``). The peak can be reset (``/proc/PID/clear_refs``) for a process this user
owns, so the growth caused by one piece of work can be measured against what was resident before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/{pid}/status has no {field}")


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory now."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int | str = "self") -> float:
    """Highest resident memory since the process started or :func:`reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int | str = "self") -> None:
    """Make the peak equal to the resident memory now (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_growth_mib(work: Callable[[], Any]) -> float:
    """How far this process's resident memory rose above its level before ``work()`` at its peak."""
    before = rss_mib()
    reset_peak_rss()
    work()
    return peak_rss_mib() - before


def can_measure(pid: int | str = "self") -> bool:
    return os.path.exists(f"/proc/{pid}/status") and os.access(f"/proc/{pid}/clear_refs", os.W_OK)


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
