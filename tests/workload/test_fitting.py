"""Head fitting, checkpoints, the fitted-model factory, and evaluation (also through a split)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from splitcomp.errors import ModelError
from splitcomp.link.codecs import Float16Codec, Int8Codec, RawCodec, ZstdCodec
from splitcomp.workload.evaluation import evaluate, evaluate_split, predict
from splitcomp.workload.fitting import FitOptions, fit_head, fit_linear, fitted_model, load_head, save_head
from splitcomp.workload.models import ImageClassifier


class Stripes(Dataset):
    """Tiny 3-class images: a bright row band, a bright column band or a bright square, at random
    places with noise."""

    name = "stripes"
    classes = ["rows", "columns", "square"]

    def __init__(self, n: int = 60, image_size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.image_size, self.items = image_size, []
        for i in range(n):
            label, at = i % 3, int(torch.randint(2, image_size - 6, (1,), generator=g))
            image = torch.randint(0, 60, (3, image_size, image_size), generator=g)
            if label == 0:
                image[:, at : at + 3, :] += 180
            elif label == 1:
                image[:, :, at : at + 3] += 180
            else:
                image[:, at : at + 4, at : at + 4] += 180
            self.items.append((image.clamp(0, 255).to(torch.uint8), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.items[index]


def tiny_backbone(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(64, 1000))
    return ImageClassifier(net, (128.0,) * 3, (64.0,) * 3, name="tiny")


def test_fit_linear_separates_blobs_given_raw_unscaled_features() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    features = centres[labels] + torch.randn(300, 2, generator=g)
    features = features * torch.tensor([1000.0, 0.001]) + torch.tensor([5e3, -7.0])  # wildly scaled
    layer = fit_linear(features, labels, 3)
    assert float((layer(features).argmax(1) == labels).double().mean()) > 0.9


def test_fit_head_save_and_load_give_the_same_model(tmp_path: Path) -> None:
    data = Stripes()
    fitted, summary = fit_head(tiny_backbone(), data, FitOptions(batch_size=32, progress=False))
    assert summary["train_accuracy"] > 0.9 and summary["train_images"] == 60 and summary["fit_s"] > 0
    assert evaluate(fitted, Stripes(n=30, seed=1)) > 0.8  # unseen images
    path = save_head(tmp_path / "head.pt", fitted, data, summary)
    loaded = load_head(tiny_backbone(), path, image_size=16)
    x = torch.stack([data[i][0] for i in range(6)])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), fitted.eval()(x))
    assert loaded.classes == Stripes.classes

    other = tiny_backbone()
    other.name = "another"
    with pytest.raises(ModelError, match="fitted on backbone 'tiny'"):
        load_head(other, path)
    with pytest.raises(ModelError, match="fitted at 16 px"):
        load_head(tiny_backbone(), path, image_size=32)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot be read.*splitcomp-train"):
        load_head(tiny_backbone(), tmp_path / "junk.pt")


def test_fitted_model_fits_once_when_missing_or_names_the_command(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "head.pt"
    with pytest.raises(ModelError, match="splitcomp-train"):
        fitted_model(tiny_backbone(), Stripes(), checkpoint=str(path), fit_if_missing=False)
    model = fitted_model(tiny_backbone(), Stripes(), checkpoint=str(path), fit={"progress": False})
    assert path.is_file() and model.classes == Stripes.classes
    stamp = path.stat().st_mtime_ns
    again = fitted_model(tiny_backbone(), Stripes(), checkpoint=str(path), fit_if_missing=False)
    assert path.stat().st_mtime_ns == stamp
    x = Stripes(n=3)[2][0][None]
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))


def test_predict_and_evaluate_agree_with_a_manual_loop() -> None:
    model = tiny_backbone().eval()
    data = Stripes(n=10)
    preds, labels = predict(model, data, batch_size=4)
    with torch.no_grad():
        manual = [int(model(data[i][0][None]).argmax()) for i in range(10)]
    assert preds.tolist() == manual and labels.tolist() == [data[i][1] for i in range(10)]
    assert evaluate(model, data) == sum(p == y for p, y in zip(manual, labels.tolist(), strict=True)) / 10


def test_evaluate_split_is_exact_for_lossless_codecs_and_counts_bytes() -> None:
    split = pytest.importorskip("splitcomp.split")
    data = Stripes(n=12)
    model, _ = fit_head(tiny_backbone(), data, FitOptions(batch_size=32, progress=False))
    model.eval()
    plan = split.analyze(model, data[0][0][None])
    reference = evaluate(model, data)
    cut = plan.cuts[len(plan.cuts) // 2]
    for codec in (RawCodec(), ZstdCodec()):
        result = evaluate_split(plan, cut, codec, data)
        assert result["agreement"] == 1.0 and result["accuracy"] == result["accuracy_reference"] == reference
    raw = evaluate_split(plan, cut, RawCodec(), data)
    assert raw["bytes_mean"] == cut.bytes  # per image, what the plan counts for a batch of one
    lossy = evaluate_split(plan, cut, Int8Codec(), data)
    assert lossy["bytes_mean"] < raw["bytes_mean"] and lossy["agreement"] > 0.5
    assert evaluate_split(plan, "input", Float16Codec(), data)["bytes_mean"] == 3 * 16 * 16  # uint8 stays raw
