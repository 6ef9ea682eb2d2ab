"""``splitcomp-train``: fit the classifier head of ``model=fitted`` on the dataset's train split,
evaluate it on the test split, save the checkpoint the model config loads, and log it all to MLflow.

    splitcomp-train                                   # Lite0 head on Fashion-MNIST at 224 px
    splitcomp-train train.limit=6000 train.test_limit=2000 dataset.image_size=160
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from splitcomp.errors import ConfigError
from splitcomp.tasks.common import CONF_DIR, config_dict, user_errors_are_one_line
from splitcomp.track import start_run_from_config
from splitcomp.workload.evaluation import evaluate
from splitcomp.workload.fitting import FitOptions, default_checkpoint, fit_head, save_head
from splitcomp.workload.models import ImageClassifier

log = logging.getLogger(__name__)


def log_model(model: ImageClassifier, image_size: int) -> None:
    """The fitted model as an MLflow model, exported with torch.export (``pt2``, no Python object serialisation) and
    explicit pip requirements (no environment inference, no network)."""
    import mlflow
    import numpy as np
    import torch

    example = np.zeros((2, 3, image_size, image_size), dtype=np.uint8)  # batch 2: the batch dim stays dynamic
    mlflow.pytorch.log_model(model.eval(), name="model", serialization_format="pt2", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, save, evaluate, log; returns the logged metrics and the checkpoint path."""
    if "backbone" not in cfg.model:
        raise ConfigError("splitcomp-train fits the classifier head of model=fitted; run it with "
                          "model=fitted (choose the backbone with model.backbone._target_/weights)")
    options = FitOptions.from_mapping(cfg.train)
    backbone = instantiate(cfg.model.backbone)
    train_set = instantiate(cfg.dataset, split="train", limit=options.limit)
    test_set = instantiate(cfg.dataset, split="test", limit=cfg.train.get("test_limit"))
    path = Path(cfg.model.get("checkpoint") or default_checkpoint(backbone.name, train_set.name, train_set.image_size))
    run_name = f"train-{backbone.name}-{train_set.name}-{train_set.image_size}"
    with start_run_from_config(cfg.tracking, config=config_dict(cfg), run_name=run_name) as tracker:
        log.info("fitting a %s head on %d %s images", backbone.name, len(train_set), train_set.name)
        model, summary = fit_head(backbone, train_set, options)
        save_head(path, model, train_set, summary)
        log.info("evaluating on %d test images", len(test_set))
        metrics = {**summary, "test_accuracy": evaluate(model, test_set, options.batch_size, options.progress),
                   "test_images": len(test_set)}
        tracker.log_metrics(metrics)
        tracker.log_artifact(path)
        if cfg.train.get("log_model", True):
            log_model(model, train_set.image_size)
    print(f"train_accuracy {metrics['train_accuracy']:.4f} on {metrics['train_images']} images, "
          f"test_accuracy {metrics['test_accuracy']:.4f} on {metrics['test_images']} images, "
          f"fit {metrics['fit_s']:.1f} s; head saved to {path}")
    return {**metrics, "checkpoint": str(path)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
