"""Labelled image datasets that yield what a camera gives: ``(uint8 tensor [3, H, W], int label)``.

Every dataset takes ``image_size`` (square side in pixels), ``limit`` (``None`` = all items) and
``split`` (``"train"`` or ``"test"``). ``limit`` keeps a class-balanced, deterministic subset: the
first items of every class in file order, taken round-robin (so ``limit=1000`` on Fashion-MNIST holds
100 images of each class, and a smaller limit is a subset of a larger one).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from splitcomp.errors import ConfigError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_UBYTE = 0x08  # the only idx element type the MNIST family uses


def _check_split(split: str, allowed: Sequence[str] = ("train", "test")) -> None:
    if split not in allowed:
        raise ConfigError(f"dataset.split={split!r} is not valid; use one of {list(allowed)}")


def _check_options(image_size: int, limit: int | None) -> None:
    if int(image_size) < 1:
        raise ConfigError(f"dataset.image_size={image_size} must be a positive number of pixels")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"dataset.limit={limit} must be a positive count or null for all items")


def balanced_subset(labels: Sequence[int] | np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` items taken round-robin over the classes, each class in file order;
    returned in file order. ``None`` (or a limit >= len) keeps everything."""
    labels = np.asarray(labels)
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)  # position of each item within its class
    starts = np.searchsorted(labels[order], labels[order], side="left")
    rank[order] = np.arange(len(labels)) - starts
    chosen = np.lexsort((np.arange(len(labels)), rank))[:limit]
    return np.sort(chosen)


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[C, H, W]`` (C = 1 or 3) -> uint8 ``[3, size, size]``, bilinear with antialiasing."""
    if tuple(image.shape[-2:]) != (size, size):  # uint8 in, uint8 out: torch's native path, no float copy
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return image.expand(3, -1, -1).contiguous()  # grey: resized once, then copied to RGB


def center_crop_square(image: torch.Tensor) -> torch.Tensor:
    """The largest centred square of a ``[C, H, W]`` image."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side]


# ----------------------------------------------------------------------------------------- idx files

def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (``.gz`` or plain) of unsigned bytes into an array of its declared shape.

    The header is two zero bytes, the element type (0x08 = uint8), the number of dimensions, then
    each dimension as a big-endian int32; anything else raises ConfigError naming the file."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"cannot read idx file {path} ({exc}); reinstall the dataset or fix dataset.root") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or data[3] == 0:
        raise ConfigError(f"{path} is not an idx file of unsigned bytes (bad magic number "
                          f"{data[:4].hex() or 'missing'}); reinstall the dataset or fix dataset.root")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"idx file {path} is truncated inside its header; reinstall the dataset")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ConfigError(f"idx file {path} declares shape {shape} ({expected} bytes) but holds "
                          f"{len(data) - header} bytes; reinstall the dataset")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):  # the second is torchvision's download layout
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_fashion_mnist(root: str | Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` and labels ``[N]`` (both uint8) of one Fashion-MNIST split."""
    _check_split(split)
    root = Path(root).expanduser()
    stems = _IDX_FILES[split]
    paths = [_find_idx(root, stem) for stem in stems]
    if None in paths and download:
        _download_fashion_mnist(root, split)
        paths = [_find_idx(root, stem) for stem in stems]
    if None in paths:
        raise ConfigError(f"Fashion-MNIST {split} files ({stems[0]}.gz, {stems[1]}.gz) are not in {root}; "
                          "run `apt-get install dataset-fashion-mnist`, or set dataset.root to a folder "
                          "holding them, or set dataset.download=true with a writable dataset.root")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels "
                          f"{labels.shape}; reinstall the dataset")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ConfigError(f"{paths[1]} holds label {labels.max()}, Fashion-MNIST has 10 classes; reinstall the dataset")
    return images, labels


def _download_fashion_mnist(root: Path, split: str) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=(split == "train"), download=True)
    except Exception as exc:  # no network, read-only folder, checksum mismatch
        raise ConfigError(f"downloading Fashion-MNIST into {root} failed ({exc}); run "
                          "`apt-get install dataset-fashion-mnist` or point dataset.root at the idx files") from None


class FashionMNIST(Dataset):
    """Fashion-MNIST (10 clothing classes, 28x28 grey) upscaled to ``image_size`` with 3 channels."""

    name = "fashion_mnist"
    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str = FASHION_MNIST_ROOT, split: str = "train", image_size: int = 224,
                 limit: int | None = None, download: bool = False) -> None:
        _check_options(image_size, limit)
        images, labels = load_fashion_mnist(root, split, download)
        keep = balanced_subset(labels, limit)
        self.images = torch.from_numpy(images[keep].copy())
        self.labels = torch.from_numpy(labels[keep].astype(np.int64))
        self.split, self.image_size = split, int(image_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return resize_uint8(self.images[index][None], self.image_size), int(self.labels[index])


# ------------------------------------------------------------------------------------- image folder

class ImageFolderDataset(Dataset):
    """Any ``root/<class>/<image>`` folder (e.g. ImageNet val in synset folders): the shorter side is
    resized to ``image_size / crop_fraction``, then the centre ``image_size`` square is kept (the usual
    ImageNet evaluation transform). Class indices follow sorted folder names. If ``root/<split>``
    exists it is used, otherwise ``root`` itself."""

    name = "imagefolder"

    def __init__(self, root: str | None, split: str = "test", image_size: int = 224, limit: int | None = None,
                 crop_fraction: float = 0.875) -> None:
        from torchvision.datasets import ImageFolder

        _check_options(image_size, limit)
        if not root:
            raise ConfigError("dataset=imagefolder needs dataset.root=/path/to/images (one subfolder per class)")
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"dataset.crop_fraction={crop_fraction} must be in (0, 1]")
        folder = Path(root).expanduser()
        if (folder / split).is_dir():
            folder = folder / split
        if not folder.is_dir():
            raise ConfigError(f"image folder {folder} does not exist; set dataset.root to a folder of class subfolders")
        try:
            self.folder = ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as exc:
            raise ConfigError(f"{folder} holds no labelled images ({exc}); set dataset.root to a folder "
                              "with one subfolder of images per class") from None
        self.classes = self.folder.classes
        self.indices = balanced_subset(self.folder.targets, limit)
        self.split, self.image_size, self.crop_fraction = split, int(image_size), crop_fraction

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.functional import pil_to_tensor

        image, label = self.folder[int(self.indices[index])]
        return crop_resize(pil_to_tensor(image.convert("RGB")), self.image_size, self.crop_fraction), int(label)


def crop_resize(image: torch.Tensor, size: int, crop_fraction: float = 0.875) -> torch.Tensor:
    """uint8 ``[C, H, W]`` -> uint8 ``[3, size, size]``: shorter side to ``size / crop_fraction``,
    then the centre square of ``size``."""
    h, w = image.shape[-2:]
    scale = size / crop_fraction / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resize_uint8(resized[:, top : top + size, left : left + size], size)


# ------------------------------------------------------------------------------------------- samples

# scikit-image photos that ship with the package (no download), with the ImageNet-1k class that best
# names their main object. ImageNet has no "rocket": the Falcon launcher is labelled "missile".
# (The astronaut portrait has no ImageNet class and is left out.)
SAMPLE_PHOTOS: dict[str, tuple[int, str]] = {
    "chelsea": (285, "Egyptian cat"),
    "coffee": (967, "espresso"),
    "rocket": (657, "missile"),
    "camera": (872, "tripod"),
    "clock": (892, "wall clock"),
}


class SamplesDataset(Dataset):
    """A handful of real photos from ``skimage.data`` with ImageNet-1k labels, for smoke runs of
    ImageNet classifiers (see SAMPLE_PHOTOS). Both splits hold the same photos."""

    name = "samples"

    def __init__(self, split: str = "test", image_size: int = 224, limit: int | None = None) -> None:
        import skimage.data

        _check_split(split)
        _check_options(image_size, limit)
        self.classes = imagenet_classes()
        names = list(SAMPLE_PHOTOS)[: limit or None]
        self.images = []
        for photo in names:
            array = np.asarray(getattr(skimage.data, photo)())
            tensor = torch.from_numpy(np.ascontiguousarray(array[..., :3] if array.ndim == 3 else array[..., None]))
            self.images.append(resize_uint8(center_crop_square(tensor.permute(2, 0, 1)), int(image_size)))
        self.labels = [SAMPLE_PHOTOS[photo][0] for photo in names]
        self.photos, self.split, self.image_size = names, split, int(image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
