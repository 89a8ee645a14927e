"""Evaluation datasets: specs, loaders and subsets. Importing this package registers every dataset."""

from ..errors import DatasetNotFoundError
from . import cifar, synthetic, tinyimagenet  # noqa: F401  (registration)
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, ImageDataset, TensorImageDataset, clean_classname
from .subset import Subset, select_subset

__all__ = [
    "DatasetNotFoundError",
    "DATASETS",
    "GENERIC_TEMPLATE",
    "DatasetSpec",
    "ImageDataset",
    "Subset",
    "TensorImageDataset",
    "clean_classname",
    "select_subset",
]
