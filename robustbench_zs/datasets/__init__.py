"""Evaluation datasets: specs, loaders and subsets. Importing this package registers every dataset."""

# ruff: noqa: I001  (the import order below is the registration order: the order of the paper's tables)

from ..errors import DatasetNotFoundError

# registration, in the order of the paper's tables (protocol.md section 5); synthetic last
from . import cifar, stl10, sun397, food101, pets, flowers102, dtd, eurosat, fgvc  # noqa: F401
from . import tinyimagenet, imagenet, caltech, cars, pcam, synthetic, world  # noqa: F401
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
