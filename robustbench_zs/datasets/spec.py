"""Dataset specs: what a dataset is (id, splits, classes, prompts, on-disk layout) and how to load it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import Registry

METADATA = Path(__file__).resolve().parent / "metadata"

#: The generic prompt of the official PMG-AFT code (protocol.md section 5).
GENERIC_TEMPLATE = "This is a photo of a {}"


@cache
def load_metadata(name: str) -> dict:
    with open(METADATA / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def clean_classname(name: str) -> str:
    """The official code's rule for generic rows: lowercase, and ``_``, ``-``, ``/`` become spaces."""
    return name.lower().replace("_", " ").replace("-", " ").replace("/", " ")


class ImageDataset(Dataset):
    """A loaded split. Items are ``(image, label)`` with image a uint8 tensor (3, H, W) at native resolution.

    Attributes:
        classnames: raw class names in label order (before prompt clean-up).
        root: the folder it was read from (None for generated data).
    """

    classnames: list[str]
    root: Path | None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        """sha256 identifying the split's content, so records never outlive a change of the files."""
        raise NotImplementedError


class TensorImageDataset(ImageDataset):
    """A split held in memory as uint8 arrays (CIFAR, synthetic)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classnames: list[str], root: Path | None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.classnames = list(classnames)
        self.root = root

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def fingerprint(self) -> str:
        """sha256 of the decoded images and labels."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256(f"{tuple(self.images.shape)}|".encode())
            h.update(self.images.numpy().tobytes())
            h.update(self.labels.numpy().astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


@dataclass(frozen=True)
class DatasetSpec:
    """Metadata of one evaluation dataset.

    Args:
        id: registry name (``cifar10``).
        name: display name (``CIFAR-10``).
        num_classes: number of labels.
        splits: splits the loader can read; ``eval_split`` is the one the benchmark evaluates.
        templates: prompt templates of the ``paper`` prompt set (the official code's single prompt).
        classnames: class names in label order, or None where they come from the files (TinyImageNet's wnids).
        layout: the expected on-disk layout under the data root, for error messages.
        source: where the data comes from, for error messages.
        loader: ``loader(data_root, split) -> ImageDataset``; raises DatasetNotFoundError on a bad layout.
        needs_root: False for generated datasets.
        folder: the dataset's top folder under the data root (None for generated datasets).
    """

    id: str
    name: str
    num_classes: int
    splits: tuple[str, ...]
    eval_split: str
    templates: tuple[str, ...]
    layout: str
    source: str
    loader: Callable[[Path, str], ImageDataset] = field(repr=False, compare=False)
    classnames: tuple[str, ...] | None = None
    needs_root: bool = True
    folder: str | None = None

    def prompt_classnames(self, raw: list[str]) -> list[str]:
        return [clean_classname(c) for c in raw]


DATASETS: Registry[DatasetSpec] = Registry("dataset")
