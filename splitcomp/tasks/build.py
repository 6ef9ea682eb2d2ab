"""Builds the run's objects from a composed config; every task goes through here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.runtime.fingerprint import model_fingerprint

log = logging.getLogger("splitcomp")


@dataclass
class Workload:
    model: nn.Module
    example_input: torch.Tensor
    codec: Any
    plan: Any
    fingerprint: dict[str, str]


def example_input(cfg: DictConfig, dataset: Any = None) -> torch.Tensor:
    """A uint8 image batch of one at the dataset's image size: the dataset's first image when
    given (compressing codecs send what real content compresses to), else a blank one."""
    size = int(cfg.dataset.image_size)
    if size < 8:
        raise ConfigError(f"dataset.image_size={size} is too small; use 32 or more")
    if dataset is not None and len(dataset) > 0:
        return dataset[0][0].unsqueeze(0)
    channels = int(cfg.dataset.get("channels", 3))
    return torch.zeros(1, channels, size, size, dtype=torch.uint8)


def build_workload(cfg: DictConfig, dataset: Any = None) -> Workload:
    """Model (eval mode), example input, codec, split plan and the model's fingerprint."""
    from splitcomp.split import analyze  # the split room; imported late to keep startup light

    torch.manual_seed(int(cfg.get("seed", 0)))  # untrained weights must be the same on both sides
    model: nn.Module = instantiate(cfg.model).eval()
    codec = instantiate(cfg.codec)
    rule = instantiate(cfg.bottleneck)
    x = example_input(cfg, dataset)
    plan = analyze(model, x, codec=codec, rule=rule, leaf_modules=tuple(cfg.get("leaf_modules") or ()))
    return Workload(model, x, codec, plan, model_fingerprint(model, tuple(x.shape), x.dtype, codec))


def torch_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"server.device={name} but no CUDA device is available; use server.device=auto or cpu")
    return torch.device(name)
