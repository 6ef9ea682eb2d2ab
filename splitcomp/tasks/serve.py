"""``splitcomp-serve``: the edge server alone (same config as ``splitcomp-run``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from splitcomp.tasks.common import CONF_DIR, user_errors_are_one_line


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> None:
    from splitcomp.build import serve  # heavy imports after argument parsing

    serve(cfg)


if __name__ == "__main__":
    main()
