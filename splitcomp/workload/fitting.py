"""A new classifier head on a frozen pretrained backbone: features once, then a linear fit.

On a CPU the backbone's forward pass is the whole cost, so the features of the training images are
computed once and a multinomial logistic regression is fitted on them (L-BFGS, full batch). The
fitted head replaces the backbone's classifier layer, giving an ordinary uint8-input model.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from splitcomp.errors import ConfigError, ModelError
from splitcomp.files import atomic_path
from splitcomp.workload.evaluation import batches, channels_last, for_inference
from splitcomp.workload.models import ImageClassifier, classifier_layer, replace_classifier

log = logging.getLogger("splitcomp")

CHECKPOINT_FORMAT = "splitcomp-head/1"


@dataclass
class FitOptions:
    """How a head is fitted (config group ``train/``)."""

    limit: int | None = 1500  # training images, class-balanced subset (None = the whole train split)
    batch_size: int = 16  # feature-extraction batch (16 is the fastest on a 2-core CPU)
    weight_decay: float = 0.1  # L2 penalty on the standardised-feature weights
    max_iter: int = 100  # L-BFGS iterations (it converges in about 100 on 1280 features)
    progress: bool = True

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> FitOptions:
        """Known keys of ``options`` (other keys of the train block are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(options or {}).items() if k in names})


@torch.inference_mode()
def extract_features(model: ImageClassifier, dataset: Dataset, batch_size: int = 16,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of ``model``'s classifier layer for every image (float32 ``[N, D]``) and the labels."""
    extractor = copy.deepcopy(model)
    replace_classifier(extractor, nn.Identity())
    extractor = for_inference(extractor)
    feats, labels = [], []
    for images, target in batches(dataset, batch_size, progress, desc="features"):
        feats.append(extractor(channels_last(images)).float())
        labels.append(target)
    return torch.cat(feats), torch.cat(labels)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 0.1,
               max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression on ``features`` -> an ``nn.Linear`` that takes raw features.

    Features are standardised for a well-conditioned fit; the scaling is folded back into the
    layer's weight and bias afterwards."""
    x, labels = features.float(), labels.clone()  # clone: plain tensors, not inference-mode ones
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        solver.zero_grad()
        loss = nn.functional.cross_entropy(z @ weight.T + bias, labels) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    solver.step(loss_fn)
    layer = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        folded = weight / std
        layer.weight.copy_(folded)
        layer.bias.copy_(bias - folded @ mean)
    return layer


def fit_head(model: ImageClassifier, train_set: Dataset, options: FitOptions | None = None) -> tuple[ImageClassifier, dict[str, float]]:
    """A copy of ``model`` whose classifier layer is fitted on ``train_set``, and a summary:
    ``train_accuracy``, ``train_images``, ``fit_s`` (all of it), ``features_s`` and
    ``features_img_per_s`` (the backbone pass)."""
    options = options or FitOptions()
    num_classes = len(train_set.classes)
    start = time.perf_counter()
    features, labels = extract_features(model, train_set, options.batch_size, options.progress)
    features_s = time.perf_counter() - start
    head = fit_linear(features, labels, num_classes, options.weight_decay, options.max_iter)
    fit_s = time.perf_counter() - start
    with torch.no_grad():
        train_accuracy = float((head(features).argmax(dim=1) == labels).double().mean())
    fitted = copy.deepcopy(model)
    replace_classifier(fitted, head)
    return fitted, {"train_accuracy": train_accuracy, "train_images": len(labels), "fit_s": fit_s,
                    "features_s": features_s, "features_img_per_s": len(labels) / max(features_s, 1e-9)}


# --------------------------------------------------------------------------------------- checkpoints

def default_checkpoint(backbone: str, dataset: str, image_size: int) -> Path:
    """``outputs/checkpoints/<backbone>_<dataset>_<image_size>.pt`` (relative to the working dir)."""
    safe = backbone.replace(":", "-").replace("/", "-")
    return Path("outputs") / "checkpoints" / f"{safe}_{dataset}_{image_size}.pt"


def save_head(path: str | Path, model: ImageClassifier, dataset: Any, summary: Mapping[str, float]) -> Path:
    """Save the fitted classifier layer plus what it belongs to (backbone id, classes, image size)."""
    layer = classifier_layer(model)
    with atomic_path(path) as partial:
        torch.save({"format": CHECKPOINT_FORMAT, "backbone": model.name, "dataset": dataset.name,
                    "classes": list(dataset.classes), "image_size": int(dataset.image_size),
                    "head": {k: v.detach().clone() for k, v in layer.state_dict().items()},
                    "summary": {k: float(v) for k, v in summary.items()}}, partial)
    return Path(path)


def load_head(backbone: ImageClassifier, path: str | Path, image_size: int | None = None) -> ImageClassifier:
    """``backbone`` with the classifier layer saved at ``path`` (checked to belong to it)."""
    path = Path(path)
    fix = f"delete {path} and run `splitcomp-train` to fit it again"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint")
        weight, bias = ckpt["head"]["weight"], ckpt["head"]["bias"]
    except Exception as exc:
        raise ModelError(f"head checkpoint {path} cannot be read ({exc}); {fix}") from None
    if ckpt["backbone"] != backbone.name:
        raise ModelError(f"head checkpoint {path} was fitted on backbone {ckpt['backbone']!r}, not "
                         f"{backbone.name!r}; set model.checkpoint to another file or {fix}")
    if image_size is not None and ckpt["image_size"] != int(image_size):
        raise ModelError(f"head checkpoint {path} was fitted at {ckpt['image_size']} px, not {image_size}; "
                         f"set model.checkpoint to another file or {fix}")
    in_features = classifier_layer(backbone).in_features
    if weight.dim() != 2 or weight.shape[1] != in_features or bias.shape != weight.shape[:1]:
        raise ModelError(f"head checkpoint {path} has a {tuple(weight.shape)} layer, the backbone gives "
                         f"{in_features} features; {fix}")
    model = copy.deepcopy(backbone)
    layer = nn.Linear(in_features, weight.shape[0])
    layer.load_state_dict({"weight": weight, "bias": bias})
    replace_classifier(model, layer)
    model.classes = list(ckpt["classes"])
    return model


# ------------------------------------------------------------------------------------- model factory

def _instantiate(config: Any, **overrides: Any) -> Any:
    """Hydra-instantiate a config node (a DictConfig is a Mapping); built objects pass through."""
    if isinstance(config, Mapping):
        from hydra.utils import instantiate

        return instantiate(config, **overrides)
    return config


def _dataset_name(dataset: Any) -> str:
    """``name`` of the dataset class a config node targets, or of a built dataset."""
    if isinstance(dataset, Mapping):
        from hydra.utils import get_class

        cls = get_class(dataset["_target_"])
        return getattr(cls, "name", cls.__name__.lower())
    return dataset.name


def fit_missing_head(backbone: Any, dataset: Any, checkpoint: str | None = None,
                     fit: Mapping[str, Any] | None = None) -> Path | None:
    """Fit the head of :func:`fitted_model` and save it, if its checkpoint is missing (a one-time
    step of minutes, with a progress bar); returns the checkpoint written, None when it existed."""
    net = _instantiate(backbone)
    if not isinstance(net, ImageClassifier):
        raise ConfigError(f"model.backbone must build an ImageClassifier, got {type(net).__name__}")
    image_size = int(dataset["image_size"] if isinstance(dataset, Mapping) else dataset.image_size)
    path = Path(checkpoint) if checkpoint else default_checkpoint(net.name, _dataset_name(dataset), image_size)
    if path.is_file():
        return None
    options = FitOptions.from_mapping(fit)
    train_set = _instantiate(dataset, split="train", limit=options.limit)
    log.info("fitting a head for %s on %d %s images -> %s (once: later runs load it)", net.name, len(train_set),
             train_set.name, path)
    fitted, summary = fit_head(net, train_set, options)
    save_head(path, fitted, train_set, summary)
    return path


def fitted_model(backbone: Any, dataset: Any, checkpoint: str | None = None, fit_if_missing: bool = True,
                 fit: Mapping[str, Any] | None = None) -> ImageClassifier:
    """A pretrained backbone with a classifier head fitted on ``dataset``'s train split.

    ``backbone`` and ``dataset`` are config nodes (``_target_``) or built objects (a built dataset is
    used for fitting as it is; a config node is built with ``split=train``). The head is read
    from ``checkpoint`` (default :func:`default_checkpoint`); if that file is missing and
    ``fit_if_missing`` is set, it is fitted now (``fit`` = the train block, see :class:`FitOptions`)
    and saved there, otherwise ModelError names the command that fits it. The run's assembly
    (:func:`splitcomp.build.build_workload`) fits a missing head as a step of its own first, so
    instantiating the ``model`` config only loads."""
    net = _instantiate(backbone)
    if not isinstance(net, ImageClassifier):
        raise ConfigError(f"model.backbone must build an ImageClassifier, got {type(net).__name__}")
    image_size = int(dataset["image_size"] if isinstance(dataset, Mapping) else dataset.image_size)
    name = _dataset_name(dataset)
    path = Path(checkpoint) if checkpoint else default_checkpoint(net.name, name, image_size)
    if not path.is_file():
        if not fit_if_missing:
            where = f" model.checkpoint={path}" if checkpoint else ""
            raise ModelError(f"head checkpoint {path} does not exist; fit it with `splitcomp-train model=fitted "
                             f"dataset={name} dataset.image_size={image_size}{where}` or set model.fit_if_missing=true")
        fit_missing_head(net, dataset, str(path), fit)
    return load_head(net, path, image_size)
