"""Multirun sweeps in MLflow: one parent run per sweep, one child run per job.

``SweepCallback`` is a Hydra callback (registered in ``conf/hydra/default.yaml``). When a multirun
starts it opens the parent run in the configured experiment and exports its id; every job's
``start_run_from_config`` tags its run with ``mlflow.parentRunId`` from there. When the sweep
ends, the children's metrics are gathered into a summary table (artifacts ``sweep_summary.csv``,
``sweep_summary.md``) and summary metrics on the parent.

How the id reaches the jobs, whatever the launcher:

* the environment variable ``SPLITCOMP_SWEEP_PARENT_RUN_ID``, set in the launching process (the
  basic launcher runs the jobs there; joblib's worker processes inherit it);
* ``on_job_start``, which runs inside each job (also on a SLURM node or a Ray worker, where the
  callback object travels pickled with the job) and sets the variable from the callback's state;
* a record ``mlflow_sweep.json`` in the sweep folder, for people and scripts.

A job whose process dies (killed, out of memory, a lost node) cannot end its run. When the sweep is
over, the callback ends such runs as FAILED, and counts as failed every job of the sweep without a
FINISHED run, also one that died before it could open its run: the parent carries the number of
jobs the sweep made (tag ``splitcomp.jobs``, metric ``jobs``) and ``jobs_failed``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from splitcomp.redact import redact_text
from splitcomp.track.tags import JOBS_TAG, OVERRIDES_TAG, PARENT_ENV, SWEEP_TAG

RECORD_NAME = "mlflow_sweep.json"

log = logging.getLogger("splitcomp")


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the sweep's overrides; None for other sweepers."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.get("sweeper") or {}
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # a sweep only the config loader can expand (glob): size unknown
        return None


class SweepCallback(Callback):
    """Groups a multirun's MLflow runs under a parent run that carries the sweep's summary."""

    def __init__(self, summary: bool = True) -> None:
        self.summary = summary
        # plain values only: the callback is pickled with the jobs by remote launchers
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.jobs: int | None = None
        self._closed = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from splitcomp.track.tracker import resolve_tracking_uri

        tracking = config.get("tracking") or {}
        self.tracking_uri = resolve_tracking_uri(tracking.get("uri"))
        experiment = str(tracking.get("experiment") or "splitcomp")
        client = self._client()
        experiment_id = _experiment_id(client, experiment, self.tracking_uri)
        overrides = redact_text(" ".join(config.hydra.overrides.task))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tags = {SWEEP_TAG: "true", OVERRIDES_TAG: overrides, "splitcomp.sweep_dir": str(sweep_dir.resolve()),
                "splitcomp.launcher": str(config.hydra.launcher.get("_target_", "")),
                "splitcomp.task": str(config.hydra.job.name)}
        self.jobs = sweep_size(config)
        if self.jobs is not None:
            tags[JOBS_TAG] = str(self.jobs)
        run = client.create_run(experiment_id, run_name=f"sweep-{sweep_dir.name}", tags=tags)
        self.parent_run_id = run.info.run_id
        self._closed = False
        os.environ[PARENT_ENV] = self.parent_run_id
        atexit.register(self._close_if_open)  # a failed job aborts the sweep before on_multirun_end
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = {"parent_run_id": self.parent_run_id, "tracking_uri": self.tracking_uri,
                  "experiment": experiment, "overrides": overrides}
        (sweep_dir / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
        log.info("sweep parent run %s in experiment %r at %s", self.parent_run_id, experiment, self.tracking_uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id:
            os.environ[PARENT_ENV] = self.parent_run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish("FINISHED")

    def _close_if_open(self) -> None:
        if not self._closed:
            self._finish("FAILED")

    def _finish(self, status: str) -> None:
        if self._closed or not self.parent_run_id:
            return
        self._closed = True
        client = self._client()
        try:
            from splitcomp.track.report import job_counts

            children = end_dead_jobs(client, self.parent_run_id)
            if job_counts([c.info.status for c in children], self.jobs)[1]:
                status = "FAILED"
            if self.summary:
                log_sweep_summary(client, self.parent_run_id, children, self.jobs)
        finally:
            client.set_terminated(self.parent_run_id, status=status)
            os.environ.pop(PARENT_ENV, None)
        log.info("sweep parent run %s %s", self.parent_run_id, status.lower())

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from splitcomp.errors import PeerError

    try:
        experiment = client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment else client.create_experiment(name)
    except Exception as exc:  # connection refused, bad URI, ...
        raise PeerError(f"cannot reach the MLflow tracking store at {uri} ({exc}); "
                        "check tracking.uri or MLFLOW_TRACKING_URI") from None


def end_dead_jobs(client: Any, parent_run_id: str) -> list[Any]:
    """The sweep's job runs, once those still RUNNING are ended as FAILED: the sweep is over, so
    their process died (killed, out of memory, a lost node) before it could end its run. A run
    whose process still runs on this host is left open: a launcher that gives up at the first dead
    job (Hydra's submitit launcher) leaves the other jobs running on their own."""
    from splitcomp.track import report

    children = report.child_runs(client, client.get_run(parent_run_id))
    for run in children:
        if run.info.status != "RUNNING":
            continue
        if job_process_alive(run.data.tags):
            log.warning("job run %s is still running (process %s); left open", run.info.run_id,
                        run.data.tags.get("splitcomp.pid"))
            continue
        client.set_tag(run.info.run_id, "splitcomp.failure", "the job's process ended without ending its run")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("job run %s was still open at the end of the sweep: its process died; ended it as FAILED",
                    run.info.run_id)
    return [client.get_run(run.info.run_id) if run.info.status == "RUNNING" else run for run in children]


def job_process_alive(tags: dict[str, str]) -> bool:
    """Whether the job process named by a run's tags runs on this host (False when unknown)."""
    pid = tags.get("splitcomp.pid", "")
    if tags.get("splitcomp.host") != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def log_sweep_summary(client: Any, parent_run_id: str, children: list[Any], jobs: int | None = None) -> None:
    """Log the summary table of the job runs ``children`` (and summary metrics) on the parent;
    ``jobs``: how many jobs the sweep made, when known (jobs without a run count as failed)."""
    import tempfile
    import time

    from mlflow.entities import Metric

    from splitcomp.track import report

    table = report.job_table(children)
    aggregates = report.policy_aggregates(table)
    with tempfile.TemporaryDirectory() as tmp:
        for path in report.write_tables(table, aggregates, Path(tmp), stem="sweep_summary"):
            client.log_artifact(parent_run_id, str(path))
    now_ms = int(time.time() * 1000)
    summary = report.summary_metrics(table, aggregates, jobs=jobs)
    metrics = [Metric(k, float(v), now_ms, 0) for k, v in summary.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent_run_id, metrics=metrics[i : i + 1000])
