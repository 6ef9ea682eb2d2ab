"""Running classifiers over datasets: predictions, accuracy, and accuracy through a split + codec."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from splitcomp.link.codecs import Codec, decode


def for_inference(module: nn.Module) -> nn.Module:
    """An eval-mode copy with channels-last weights: about 2-3x faster convolutions on CPU, and the
    caller's module is left as it was."""
    return copy.deepcopy(module).eval().to(memory_format=torch.channels_last)


def channels_last(value: Any) -> Any:
    """4-d tensors in channels-last layout (the layout the fast path runs in); others unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def batches(dataset: Dataset, batch_size: int = 16, progress: bool = False,
            desc: str = "") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(uint8 images [B, 3, H, W], labels [B])`` batches in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    yield from tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)


@torch.inference_mode()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 16, progress: bool = False,
            desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 predictions and labels (int64 ``[N]`` each) of ``model`` over ``dataset``."""
    model = for_inference(model)
    preds, labels = [], []
    for images, target in batches(dataset, batch_size, progress, desc):
        preds.append(model(channels_last(images)).argmax(dim=1))
        labels.append(target)
    return torch.cat(preds), torch.cat(labels)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((preds == labels).double().mean()) if len(labels) else float("nan")


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 16, progress: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    return accuracy(*predict(model, dataset, batch_size, progress, desc="evaluate"))


# ----------------------------------------------------------------------------------- through a split

def send_per_image(values: tuple, codec: Codec) -> tuple[tuple, int]:
    """What the receiver gets when each image's crossing tensors go through ``codec`` as one request
    (batch of one), reassembled into the batch; plus the total payload bytes sent. Plain Python
    values (e.g. a batch size) travel as they are, outside the payload."""
    received, nbytes = [], 0
    for value in values:
        if not isinstance(value, torch.Tensor):
            received.append(value)
            continue
        parts = []
        for i in range(value.shape[0]):
            encoded = codec.encode(value[i : i + 1])
            nbytes += len(encoded.data)
            parts.append(decode(encoded))  # receiver side: by the codec name in the metadata
        received.append(torch.cat(parts))
    return tuple(received), nbytes


@torch.inference_mode()
def evaluate_split(plan: Any, cut: Any, codec: Codec, dataset: Dataset, batch_size: int = 16,
                   progress: bool = False) -> dict[str, float]:
    """Accuracy of the model split at ``cut`` (a Cut, name or index) with ``codec`` on the crossing
    tensors, against the unsplit model (the head of ``plan``'s output cut is the whole model).

    Returns ``accuracy``, ``accuracy_reference`` (unsplit), ``agreement`` (share of images where both
    predict the same class) and ``bytes_mean`` (payload bytes per image, each image sent alone)."""
    name = plan.cut(cut).name
    return evaluate_splits(plan, {name: [codec]}, dataset, batch_size, progress)[(name, codec.name)]


@torch.inference_mode()
def evaluate_splits(plan: Any, codecs_by_cut: Mapping[Any, Sequence[Codec]], dataset: Dataset,
                    batch_size: int = 16, progress: bool = False,
                    device: str | torch.device = "cpu") -> dict[tuple[str, str], dict[str, float]]:
    """:func:`evaluate_split` for several cuts, each with its own codecs, keyed by ``(cut name, codec
    name)``. Each batch runs the unsplit model once, and each cut's head once for all its codecs.
    ``device``: where heads and tails run (both on one device, so agreement must be exact)."""
    cuts = {plan.cut(cut).name: (plan.cut(cut), list(codecs)) for cut, codecs in codecs_by_cut.items()}
    last = plan.cuts[-1]
    reference = for_inference(plan.split(last)[0]).to(device)
    parts = {name: tuple(for_inference(m).to(device) for m in plan.split(cut)) for name, (cut, _) in cuts.items()}
    tally = {(name, codec.name): [0, 0, 0] for name, (_, codecs) in cuts.items() for codec in codecs}
    correct_ref = seen = 0
    for images, labels in batches(dataset, batch_size, progress, desc="evaluate splits"):
        x = channels_last(images.to(device))
        ref_sent = reference(x)
        ref = ref_sent[0].argmax(dim=1).cpu()
        correct_ref += int((ref == labels).sum())
        seen += len(labels)
        for name, (cut, codecs) in cuts.items():
            head, tail = parts[name]
            sent = ref_sent if cut.index == last.index else head(x)  # the output cut's head is the model
            for codec in codecs:
                received, nbytes = send_per_image(sent, codec)
                on_device = tuple(channels_last(v.to(device) if isinstance(v, torch.Tensor) else v) for v in received)
                pred = tail(on_device).argmax(dim=1).cpu()
                counts = tally[(name, codec.name)]
                counts[0] += int((pred == labels).sum())
                counts[1] += int((pred == ref).sum())
                counts[2] += nbytes
    return {key: {"accuracy": correct / seen, "accuracy_reference": correct_ref / seen,
                  "agreement": agree / seen, "bytes_mean": nbytes / seen}
            for key, (correct, agree, nbytes) in tally.items()}
