"""The offline workload: labelled image datasets (uint8, as a camera gives them), uint8-input
classifiers (torchvision zoo, EfficientNet-Lite0 with packaged ImageNet weights, a pretrained
backbone with a fitted head), and accuracy evaluation, also through a split with a codec."""

from splitcomp.workload.datasets import FashionMNIST, ImageFolderDataset, SamplesDataset
from splitcomp.workload.evaluation import evaluate, evaluate_split, evaluate_splits, predict
from splitcomp.workload.fitting import FitOptions, fit_head, fitted_model, load_head, save_head
from splitcomp.workload.models import ImageClassifier, lite0, torchvision_model

__all__ = [
    "FashionMNIST",
    "FitOptions",
    "ImageClassifier",
    "ImageFolderDataset",
    "SamplesDataset",
    "evaluate",
    "evaluate_split",
    "evaluate_splits",
    "fit_head",
    "fitted_model",
    "lite0",
    "load_head",
    "predict",
    "save_head",
    "torchvision_model",
]
