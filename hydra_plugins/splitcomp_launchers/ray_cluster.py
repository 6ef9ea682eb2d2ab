"""Hydra's Ray launcher (hydra-ray-launcher), made to wait for every job of a sweep.

Hydra's own Ray launcher collects the jobs in order and stops at the first one whose process died
(a killed worker, a lost node): the sweep then ends at once, the jobs still running on the cluster
are cancelled with the driver, and those not yet started never run. This one waits for every job
and turns a dead one into a failed job, so a sweep ends as with Hydra's basic launcher when a job
raises: every other job has run and logged, then the sweep reports the failure (and the MLflow
parent run counts it, see splitcomp.track.sweep). Selected with ``hydra/launcher=ray_cluster``.

Imports of Ray and of hydra-ray-launcher wait for ``launch``: Hydra imports every plugin module on
every start, also where neither is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from splitcomp.errors import ConfigError

log = logging.getLogger(__name__)


class RayClusterLauncher(Launcher):
    """Every job is one Ray task (options ``ray.remote``) on the cluster ``ray.init`` joins."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
        except ImportError as exc:
            raise ConfigError(f"hydra/launcher=ray_cluster needs Ray and hydra-ray-launcher ({exc}); "
                              "pip install 'splitcomp[cluster]'") from None
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Ray cluster launcher: {len(job_overrides)} jobs, sweep output dir {sweep_dir}")
        start_ray(self.ray_cfg.init)
        submitted = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"job_id_for_{idx}"  # the task has no scheduler id of its own
                sweep_config.hydra.job.num = idx
            ref = launch_job_on_ray(self.hydra_context, self.ray_cfg.remote, sweep_config, self.task_function,
                                    Singleton.get_state())
            submitted.append((list(overrides), sweep_config, ref))
        return [collect(overrides, sweep_config, ref) for overrides, sweep_config, ref in submitted]


def collect(overrides: list[str], sweep_config: DictConfig, ref: Any) -> JobReturn:
    """The job's own return, or a failed one when its process or node died before it returned."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        log.error(f"job #{sweep_config.hydra.job.num} ({' '.join(filter_overrides(overrides))}) died: "
                  f"{type(exc).__name__}")
        return JobReturn(overrides=overrides, cfg=sweep_config, hydra_cfg=sweep_config,
                         task_name=str(sweep_config.hydra.job.name), status=JobStatus.FAILED, _return_value=exc)
