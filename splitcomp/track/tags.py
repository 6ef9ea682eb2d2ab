"""The MLflow tags that tie a sweep's runs together, and where a job reads them from. A leaf of
``track/``: the tracker writes them, the sweep callback and the sweep report read them."""

from __future__ import annotations

import os
import socket
import sys

from splitcomp.redact import redact_text

PARENT_ENV = "SPLITCOMP_SWEEP_PARENT_RUN_ID"
SWEEP_TAG = "splitcomp.sweep"
OVERRIDES_TAG = "splitcomp.overrides"
JOB_NUM_TAG = "splitcomp.job_num"
JOBS_TAG = "splitcomp.jobs"


def sweep_parent_run_id() -> str | None:
    """The id of the running sweep's parent run, or None outside a sweep."""
    return os.environ.get(PARENT_ENV) or None


def job_tags() -> dict[str, str]:
    """Tags naming a Hydra job: its command-line overrides and, in a multirun, its job number."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    tags = {OVERRIDES_TAG: redact_text(" ".join(hydra_cfg.overrides.task))}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags[JOB_NUM_TAG] = str(hydra_cfg.job.num)
        tags.update(worker_tags())
    return tags


def worker_tags() -> dict[str, str]:
    """Where a job runs: host and process, and its Ray node when it runs as a Ray task."""
    tags = {"splitcomp.host": socket.gethostname(), "splitcomp.pid": str(os.getpid())}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        tags["splitcomp.ray_node"] = ray.get_runtime_context().get_node_id()
    return tags
