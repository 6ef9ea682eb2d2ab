"""Experiment tracking (MLflow) and plots.

The tracker's names load MLflow on first use, not on import, so that the report and plot helpers
also work where MLflow is not installed (a GPU machine lent only to profile, say)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitcomp.track.tracker import Tracker, flatten, start_run, start_run_from_config

__all__ = ["Tracker", "flatten", "start_run", "start_run_from_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from splitcomp.track import tracker

        return getattr(tracker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
