"""Datasets: real Fashion-MNIST idx files, clear errors on bad files, samples and image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitcomp.errors import ConfigError
from splitcomp.workload.datasets import (
    FASHION_MNIST_ROOT,
    SAMPLE_PHOTOS,
    FashionMNIST,
    ImageFolderDataset,
    SamplesDataset,
    balanced_subset,
    read_idx,
    resize_uint8,
)

needs_fashion_mnist = pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(),
                                         reason="apt-get install dataset-fashion-mnist")


def _write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> Path:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + dims + array.astype(np.uint8).tobytes()))
    return path


@needs_fashion_mnist
def test_fashion_mnist_test_split_is_uint8_rgb_at_image_size_and_balanced() -> None:
    data = FashionMNIST(split="test", image_size=40, limit=30)
    assert len(data) == 30
    image, label = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 40) and isinstance(label, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey copied to RGB
    assert sorted(np.bincount([data[i][1] for i in range(len(data))]).tolist()) == [3] * 10
    assert image.float().std() > 10  # a real picture, not a blank


@needs_fashion_mnist
def test_fashion_mnist_at_native_size_is_the_idx_pixels() -> None:
    native = FashionMNIST(split="train", image_size=28, limit=10)
    raw = read_idx(Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")
    labels = read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")
    assert raw.shape == (60000, 28, 28) and labels.shape == (60000,)
    first = int(balanced_subset(labels, 10)[0])
    assert torch.equal(native[0][0][0], torch.from_numpy(raw[first].copy()))
    big = FashionMNIST(split="train", image_size=112, limit=10)[0][0].float()
    assert abs(big.mean() - native[0][0].float().mean()) < 3  # resizing keeps the brightness


def test_balanced_subset_takes_classes_round_robin_in_file_order() -> None:
    labels = [2, 0, 0, 0, 1, 1, 2, 0]
    assert balanced_subset(labels, 4).tolist() == [0, 1, 2, 4]
    assert balanced_subset(labels, 6).tolist() == [0, 1, 2, 4, 5, 6]
    assert balanced_subset(labels, None).tolist() == list(range(8))


def test_resize_uint8_expands_grey_and_scales() -> None:
    grey = torch.full((1, 7, 7), 200, dtype=torch.uint8)
    out = resize_uint8(grey, 21)
    assert out.shape == (3, 21, 21) and out.dtype == torch.uint8
    assert int(out.min()) == int(out.max()) == 200


def test_corrupt_idx_files_raise_config_errors(tmp_path: Path) -> None:
    good = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    assert read_idx(_write_idx(tmp_path / "ok.gz", good)).tolist() == good.tolist()
    with pytest.raises(ConfigError, match="bad magic number"):
        read_idx(_write_idx(tmp_path / "magic.gz", good, magic=b"\x08\x03\x00\x00"))
    truncated = tmp_path / "short.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") * 3 + b"\0" * 5))
    with pytest.raises(ConfigError, match="declares shape"):
        read_idx(truncated)
    not_gzip = tmp_path / "junk.gz"
    not_gzip.write_bytes(b"this is not gzip data")
    with pytest.raises(ConfigError, match="cannot read idx file"):
        read_idx(not_gzip)


def test_missing_fashion_mnist_names_the_package_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist.*dataset.root"):
        FashionMNIST(root=str(tmp_path), split="test")


def test_fashion_mnist_reads_plain_idx_files_from_any_root(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (4, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 3, 0]))
    data = FashionMNIST(root=str(tmp_path), split="test", image_size=28)
    assert [data[i][1] for i in range(4)] == [3, 1, 3, 0]
    assert torch.equal(data[1][0][2], torch.from_numpy(images[1].astype(np.uint8)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 3]))
    with pytest.raises(ConfigError, match="disagree"):
        FashionMNIST(root=str(tmp_path), split="test")


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="dataset.split"):
        SamplesDataset(split="validation")
    with pytest.raises(ConfigError, match="dataset.limit"):
        SamplesDataset(limit=0)


def test_samples_are_labelled_skimage_photos() -> None:
    data = SamplesDataset(image_size=48)
    assert len(data) == len(SAMPLE_PHOTOS) and len(data.classes) == 1000
    for i, photo in enumerate(data.photos):
        image, label = data[i]
        assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
        assert label == SAMPLE_PHOTOS[photo][0] and data.classes[label] == SAMPLE_PHOTOS[photo][1]
    assert len(SamplesDataset(image_size=16, limit=2)) == 2


def test_image_folder_crops_resizes_and_labels_by_folder(tmp_path: Path) -> None:
    for cls, (size, colour) in {"ants": ((60, 40), (255, 0, 0)), "bees": ((30, 90), (0, 0, 255))}.items():
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, colour).save(tmp_path / "val" / cls / f"{i}.png")
    data = ImageFolderDataset(root=str(tmp_path), split="val", image_size=32, limit=4)
    assert data.classes == ["ants", "bees"] and len(data) == 4
    image, label = data[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 1
    assert image[2].float().mean() > 250 and image[0].float().mean() < 5  # blue bee images
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="needs dataset.root"):
        ImageFolderDataset(root=None)
