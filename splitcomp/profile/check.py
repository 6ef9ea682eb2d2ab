"""Sanity checks of measured profiles, run before profiles are used or cached.

A profile measured while other work shared the cores can say that the tail after an early cut
takes longer than the whole model on the server, or that a head takes four times the whole model
on the device; every policy, the oracle and the simulator then decide on times no run will see.
Four checks catch that (candidates in plan order, from full offloading to device-only):

- ``head_order``: the head up to a deeper cut is not faster than the head up to a shallower one;
- ``tail_order``: the tail after a deeper cut is not slower than after a shallower one, per batch size;
- ``head_tail_sum``: at every cut, the head's share of the whole model on the device (device-only's
  head) plus the tail's share of the whole model on the server (full offloading's tail at batch 1)
  is close to 1. Shares compare like with like: the device slowdown and any speed difference
  between device and server cancel out, and both references come from the same measurement.
  Skipped when the server computes on a GPU (its times do not split in a CPU's proportions);
- ``spread``: no time has an interquartile range (IQR) wider than ``max_spread`` of its median plus
  ``jitter_s``: on a busy machine any call can be preempted for a scheduler tick (4 ms at 250 Hz),
  which makes a sub-millisecond time look wildly spread without saying anything about its median.

Every comparison allows the measured spreads (the quartile deviation, half the IQR, of each median
compared), a relative slack (times measured moments apart drift by a few per cent even on a quiet
machine; split models pay a little call overhead per side) and an absolute floor for sub-millisecond
times, which are dominated by call overhead and timer jitter. The floor is in this machine's time,
so for device heads it is multiplied by the device slowdown, as the heads are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from splitcomp.errors import ConfigError
from splitcomp.profile.latency import CutProfile, Profiles


@dataclass(frozen=True)
class CheckLimits:
    """How far measured times may stray before a profile is refused (see the module docstring)."""

    max_spread: float = 0.5  # IQR / median above which a time is an outlier
    order_tolerance: float = 0.1  # relative slack on the ordering of heads and tails, beyond their deviations
    sum_tolerance: float = 0.25  # head share + tail share may differ from 1 by this much, beyond their deviations
    floor_s: float = 5e-4  # absolute slack for sub-millisecond times (this machine's time)
    jitter_s: float = 5e-3  # an IQR this wide is scheduling jitter, never an outlier (this machine's time)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> CheckLimits:
        values = {"max_spread": cfg.get("max_spread", cls.max_spread),
                  "order_tolerance": cfg.get("order_tolerance", cls.order_tolerance),
                  "sum_tolerance": cfg.get("sum_tolerance", cls.sum_tolerance),
                  "floor_ms": cfg.get("floor_ms", 1e3 * cls.floor_s),
                  "jitter_ms": cfg.get("jitter_ms", 1e3 * cls.jitter_s)}
        for name, value in values.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
                raise ConfigError(f"profile.{name}={value!r}; set it to a number >= 0")
        return cls(float(values["max_spread"]), float(values["order_tolerance"]), float(values["sum_tolerance"]),
                   float(values["floor_ms"]) / 1e3, float(values["jitter_ms"]) / 1e3)


@dataclass(frozen=True)
class Problem:
    """One failed check: which check, the cuts whose times are suspect, and what is wrong."""

    check: str  # head_order | tail_order | head_tail_sum | spread
    cuts: tuple[str, ...]
    text: str  # a clause, e.g. "the head up to cut a (9.0 ms) takes longer than ..."
    severity: float  # the deviation over the slack allowed (above 1 = failed)


class ProfileCheckError(ConfigError):
    """Profiles that still fail their check after re-measuring; ``profiles`` holds them for inspection."""

    def __init__(self, message: str, profiles: Profiles) -> None:
        super().__init__(message)
        self.profiles = profiles


@dataclass(frozen=True)
class _Time:
    median: float
    spread: float  # IQR

    @property
    def deviation(self) -> float:
        """The quartile deviation (half the IQR): how far the median itself may be off, roughly
        (its standard error is 0.42 IQR for 5 samples and shrinks with more)."""
        return self.spread / 2

    def __str__(self) -> str:
        return f"{1e3 * self.median:.1f} ms"


def _head(cut: CutProfile) -> _Time:
    return _Time(cut.head_s.get(1, 0.0), cut.head_spread_s.get(1, 0.0))


def _tail(cut: CutProfile, batch: int) -> _Time:
    return _Time(cut.tail_s.get(batch, 0.0), cut.tail_spread_s.get(batch, 0.0))


def _offloading(profiles: Profiles) -> list[CutProfile]:
    return [cut for cut in profiles.cuts if not cut.is_device_only]


def _over(deviation: float, slack: float) -> float:
    """How many times the slack a deviation is (inf when no slack is allowed at all)."""
    return deviation / slack if slack > 0 else math.inf


def _order_slack(a: _Time, b: _Time, limits: CheckLimits, floor_s: float) -> float:
    return a.deviation + b.deviation + max(floor_s, limits.order_tolerance * max(a.median, b.median))


def _share_slack(part: _Time, whole: _Time, floor_s: float) -> float:
    """How far ``part / whole`` may be off, from the deviations of both (first-order propagation)."""
    return (part.deviation + part.median / whole.median * whole.deviation + floor_s) / whole.median


def head_order(profiles: Profiles, limits: CheckLimits, slowdown: float) -> list[Problem]:
    problems = []
    cuts = profiles.cuts
    for i, shallow in enumerate(cuts):
        for deep in cuts[i + 1:]:
            a, b = _head(shallow), _head(deep)
            slack = _order_slack(a, b, limits, limits.floor_s * slowdown)
            if a.median - b.median > slack:
                problems.append(Problem("head_order", (shallow.name, deep.name),
                                        f"the head up to cut {shallow.name} ({a}) takes longer than the head "
                                        f"up to the deeper cut {deep.name} ({b})", _over(a.median - b.median, slack)))
    return problems


def tail_order(profiles: Profiles, limits: CheckLimits) -> list[Problem]:
    problems = []
    cuts = _offloading(profiles)
    for i, shallow in enumerate(cuts):
        for deep in cuts[i + 1:]:
            for batch in sorted(set(shallow.tail_s) & set(deep.tail_s)):
                a, b = _tail(shallow, batch), _tail(deep, batch)
                slack = _order_slack(a, b, limits, limits.floor_s)
                if b.median - a.median > slack:
                    problems.append(Problem("tail_order", (shallow.name, deep.name),
                                            f"the server tail after cut {deep.name} ({b} at batch {batch}) takes "
                                            f"longer than after the shallower cut {shallow.name} ({a})",
                                            _over(b.median - a.median, slack)))
    return problems


def head_tail_sum(profiles: Profiles, limits: CheckLimits, slowdown: float) -> list[Problem]:
    full = next((c for c in profiles.cuts if c.is_full_offload), None)
    local = next((c for c in profiles.cuts if c.is_device_only), None)
    if full is None or local is None:
        return []
    device_whole, server_whole = _head(local), _tail(full, 1)
    if device_whole.median <= 0 or server_whole.median <= 0:
        return []
    problems = []
    for cut in _offloading(profiles):
        if cut is full:
            continue
        head, tail = _head(cut), _tail(cut, 1)
        share = head.median / device_whole.median + tail.median / server_whole.median
        slack = (limits.sum_tolerance + _share_slack(head, device_whole, limits.floor_s * slowdown)
                 + _share_slack(tail, server_whole, limits.floor_s))
        if abs(share - 1.0) > slack:
            problems.append(Problem("head_tail_sum", (cut.name, full.name, local.name),
                                    f"at cut {cut.name} the head ({head}) and the tail ({tail} at batch 1) add up "
                                    f"to {share:.2f} of the unsplit model ({device_whole} on the device, "
                                    f"{server_whole} on the server)", _over(abs(share - 1.0), slack)))
    return problems


def spreads(profiles: Profiles, limits: CheckLimits, slowdown: float) -> list[Problem]:
    problems = []
    for cut in profiles.cuts:
        times = [("head", _head(cut), limits.jitter_s * slowdown)]
        if not cut.is_device_only:
            times += [(f"tail at batch {b}", _tail(cut, b), limits.jitter_s) for b in sorted(cut.tail_s)]
        for what, time, jitter_s in times:
            slack = limits.max_spread * time.median + jitter_s
            if time.spread > slack:
                problems.append(Problem("spread", (cut.name,),
                                        f"the {what} at cut {cut.name} ({time}) has an IQR of "
                                        f"{1e3 * time.spread:.1f} ms, over {limits.max_spread:.0%} of its median",
                                        _over(time.spread, slack)))
    return problems


def _server_on_cpu(profiles: Profiles) -> bool:
    server = profiles.key.get("server")
    return not isinstance(server, Mapping) or str(server.get("kind", "cpu")).startswith("cpu")


def check_profiles(profiles: Profiles, limits: CheckLimits | None = None, slowdown: float = 1.0) -> list[Problem]:
    """Every problem found in ``profiles`` (empty: they pass). ``slowdown`` is the device slowdown
    the heads were dilated by."""
    limits = limits or CheckLimits()
    problems = [*head_order(profiles, limits, slowdown), *tail_order(profiles, limits),
                *spreads(profiles, limits, slowdown)]
    if _server_on_cpu(profiles):
        problems += head_tail_sum(profiles, limits, slowdown)
    return problems


def worst(problems: Iterable[Problem]) -> Problem:
    return max(problems, key=lambda p: p.severity)


def suspects(problems: Iterable[Problem]) -> set[str]:
    """The cuts to re-measure: repeatedly the cut(s) named by the most problems, until every problem
    names one. A head four times too long fails against every deeper cut: only it is re-measured."""
    remaining = [set(p.cuts) for p in problems]
    blamed: set[str] = set()
    while remaining:
        counts = Counter(name for cuts in remaining for name in cuts)
        top = max(counts.values())
        most = {name for name, n in counts.items() if n == top}
        blamed |= most
        remaining = [cuts for cuts in remaining if not cuts & most]
    return blamed


def refusal(problems: list[Problem], rounds: int, busy: str = "") -> str:
    """The one sentence that refuses a profile and says how to re-measure; ``busy`` says how busy
    the machine was while measuring ("" when it was quiet)."""
    first = worst(problems)
    others = len(problems) - 1
    more = f" (and {others} other problem{'s' if others > 1 else ''})" if others else ""
    after = f" after {rounds} re-measurement{'s' if rounds != 1 else ''}" if rounds else ""
    while_busy = f" while {busy}" if busy else ""
    return (f"the profiles measured{while_busy} fail the {first.check} check{after}: {first.text}{more}; "
            "re-measure on a quiet machine with `splitcomp-profile profile.force=true` and this run's other "
            "overrides, or set profile.check=false to use them knowingly")
