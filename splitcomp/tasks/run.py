"""``splitcomp-run``: one experiment: a policy on a scenario, real sockets or simulated, logged to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from splitcomp.tasks.common import CONF_DIR, config_dict, user_errors_are_one_line

log = logging.getLogger("splitcomp")


def output_dir() -> Path:
    """The Hydra run (or multirun job) folder, or ./outputs/run outside Hydra."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        path = Path("outputs/run")
        path.mkdir(parents=True, exist_ok=True)
        return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> float:
    from splitcomp.experiment import run_experiment  # heavy imports after argument parsing

    OmegaConf.resolve(cfg)
    result = run_experiment(cfg, output_dir(), config_dict(cfg))
    return float(result.metrics.get("latency_ms_mean", float("nan")))


if __name__ == "__main__":
    main()
