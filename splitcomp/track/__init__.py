"""Experiment tracking (MLflow) and plots."""

from splitcomp.track.tracker import Tracker, flatten, start_run, start_run_from_config

__all__ = ["Tracker", "flatten", "start_run", "start_run_from_config"]
