"""Model factories: uint8 input normalised inside, fx-traceable, weights and checkpoints, errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.fx

from splitcomp.errors import ModelError
from splitcomp.workload.datasets import SamplesDataset
from splitcomp.workload.models import classifier_name, lite0, torchvision_model


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_lite0_takes_uint8_and_traces_with_normalisation_first() -> None:
    model = lite0(weights=None, num_classes=10, image_size=32).eval()
    x = _images()
    with torch.no_grad():
        out = model(x)
        expected = model.backbone((x.float() - 127.0) / 128.0)
    assert out.shape == (2, 10) and torch.equal(out, expected)
    graph = torch.fx.symbolic_trace(model)
    ops = [n.target for n in graph.graph.nodes if n.op in ("call_method", "call_function")][:3]
    assert ops[0] == "float" and "sub" in str(ops[1]) and "truediv" in str(ops[2])
    with torch.no_grad():
        assert torch.equal(graph(x), out)
    assert classifier_name(model) == "backbone._fc"


def test_lite0_imagenet_weights_see_the_cat() -> None:
    model = lite0().eval()
    photos = SamplesDataset(image_size=224)
    image, _ = photos[photos.photos.index("chelsea")]
    with torch.no_grad():
        top5 = model(image[None]).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat


def test_torchvision_model_by_name_with_class_override() -> None:
    model = torchvision_model("mobilenet_v3_small", weights=None, num_classes=7).eval()
    with torch.no_grad():
        assert model(_images()).shape == (2, 7)
    assert model.name == "mobilenet_v3_small:random"


def test_a_vision_transformer_is_built_for_the_given_image_size() -> None:
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    model = torchvision_model("vit_b_32", image_size=64).eval()
    with torch.no_grad():
        assert model(images).shape == (1, 1000)
    assert model.backbone.encoder.pos_embedding.shape[1] == (64 // 32) ** 2 + 1  # patches + class token
    assert torchvision_model("mobilenet_v3_small", image_size=64).eval()(images).shape == (1, 1000)  # ignored


def test_unknown_torchvision_name_lists_close_valid_names() -> None:
    with pytest.raises(ModelError, match="no classification model 'resnet19'.*resnet18"):
        torchvision_model("resnet19")


def test_unknown_weights_name_lists_the_options() -> None:
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        torchvision_model("resnet18", weights="IMAGENET_V9")


def test_failed_download_is_one_model_error_suggesting_offline_options(monkeypatch) -> None:
    import torchvision.models

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ModelError, match="needs internet.*model.weights=null.*local checkpoint"):
        torchvision_model("resnet18", weights="DEFAULT")


def test_checkpoint_round_trip_and_clear_errors(tmp_path: Path) -> None:
    source = torchvision_model("mobilenet_v3_small", weights=None, num_classes=5).eval()
    path = tmp_path / "net.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = torchvision_model("mobilenet_v3_small", weights=str(path), num_classes=5).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_images()), source(_images()))
    assert loaded.name == "mobilenet_v3_small:net.pth"

    with pytest.raises(ModelError, match="does not match"):
        torchvision_model("mobilenet_v3_small", weights=str(path), num_classes=9)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cannot be read"):
        torchvision_model("mobilenet_v3_small", weights=str(corrupt))
    pickled = tmp_path / "module.pth"
    torch.save(source.backbone, pickled)  # a whole pickled module: refused by weights_only
    with pytest.raises(ModelError, match="cannot be read"):
        torchvision_model("mobilenet_v3_small", weights=str(pickled), num_classes=5)
    with pytest.raises(ModelError, match="does not exist"):
        torchvision_model("mobilenet_v3_small", weights=str(tmp_path / "missing.pth"))
