"""Dataset specs: what a dataset is (id, splits, classes, prompts, on-disk layout) and how to load it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import PluginError, Registry
from ..resources import read_json

#: The folder of the dataset metadata files in a source checkout (read them with :func:`load_metadata`).
METADATA = Path(__file__).resolve().parent / "metadata"

#: The generic prompt of the official PMG-AFT code (protocol.md section 5).
GENERIC_TEMPLATE = "This is a photo of a {}"


def load_metadata(name: str) -> dict:
    """The package data file ``metadata/<name>.json`` (parsed once and shared: do not modify it)."""
    return read_json(__package__, f"metadata/{name}.json")


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


def clean_names(raw: list[str]) -> list[str]:
    """The default ``paper`` class names: :func:`clean_classname` of each raw name."""
    return [clean_classname(c) for c in raw]


def underscores_to_spaces(data: ImageDataset) -> list[str]:
    """The default ``ensemble`` class names: the raw names with ``_`` as a space (CLIP_benchmark's rule)."""
    return [c.replace("_", " ") for c in data.classnames]


#: ``paper_preprocess`` values: attack at the native resolution, or PIL Resize(256) + CenterCrop(224) first.
PAPER_PREPROCESS = ("native", "resize256_crop224")


@dataclass(frozen=True)
class DatasetSpec:
    """Metadata of one evaluation dataset.

    Args:
        id: registry name (``cifar10``).
        name: display name (``CIFAR-10``).
        num_classes: number of labels.
        splits: splits the loader can read; ``eval_split`` is the one the benchmark evaluates.
        templates: prompt templates of the ``paper`` prompt set (the official code's single prompt).
        layout: the expected on-disk layout under the data root, for error messages.
        source: where the data comes from, for error messages.
        loader: ``loader(data_root, split) -> ImageDataset``; raises DatasetNotFoundError on a bad layout.
        classnames: class names in label order, or None where they come from the files.
        needs_root: False for generated datasets.
        folder: the dataset's top folder under the data root (None for generated datasets).
        paper_names: raw class names (label order) -> the ``paper`` prompt set's names, as the official code made them.
        ensemble_templates: CLIP_benchmark template key of the ``ensemble`` prompt set (None: no ensemble).
        own_ensemble_templates: the ``ensemble`` set's templates where CLIP_benchmark has none (the world tasks).
        ensemble_names: loaded split -> the ``ensemble`` prompt set's class names.
        native_size: (H, W) shared by every image, or None where sizes vary.
        paper_preprocess: ``native`` (attacked at native resolution) or ``resize256_crop224`` (protocol.md section 4).
        paper_train_preprocess: the official code's transform of the training split where it differs from
            ``paper_preprocess`` (CIFAR-100: ``resize256_crop224``, while its test split is attacked at 32 px); None:
            the same as ``paper_preprocess``.
        download: ``download(data_root)`` fetching the data into ``layout`` (torchvision's downloader), or None.
        manual_steps: exact steps to get the data by hand, printed by ``zsbench datasets download`` when
            ``download`` is None.
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
    paper_names: Callable[[list[str]], list[str]] = field(default=clean_names, repr=False, compare=False)
    ensemble_templates: str | None = None
    own_ensemble_templates: tuple[str, ...] | None = None
    ensemble_names: Callable[[ImageDataset], list[str]] = field(
        default=underscores_to_spaces, repr=False, compare=False
    )
    native_size: tuple[int, int] | None = None
    paper_preprocess: str = "resize256_crop224"
    paper_train_preprocess: str | None = None
    download: Callable[[Path], None] | None = field(default=None, repr=False, compare=False)
    manual_steps: str | None = None

    def __post_init__(self) -> None:
        if self.paper_preprocess not in PAPER_PREPROCESS:
            raise ValueError(f"{self.id}: paper_preprocess must be one of {PAPER_PREPROCESS}")
        if self.paper_train_preprocess not in (None, *PAPER_PREPROCESS):
            raise ValueError(f"{self.id}: paper_train_preprocess must be None or one of {PAPER_PREPROCESS}")
        if self.paper_preprocess == "native" and self.native_size is None:
            raise ValueError(f"{self.id}: native paper preprocessing needs a fixed native_size")
        if self.needs_root and self.download is None and not self.manual_steps:
            raise ValueError(f"{self.id}: give a download function or manual_steps")
        if self.eval_split not in self.splits:
            raise ValueError(f"{self.id}: eval_split {self.eval_split!r} is not among splits {self.splits}")
        if self.num_classes < 2:
            raise ValueError(f"{self.id}: num_classes must be at least 2")
        if not self.templates or not all("{}" in t for t in self.templates):
            raise ValueError(f"{self.id}: templates must be a non-empty tuple of strings with a {{}} placeholder")
        if not callable(self.loader):
            raise ValueError(f"{self.id}: loader must be callable as loader(data_root, split)")

    def prompt_classnames(self, raw: list[str]) -> list[str]:
        return self.paper_names(list(raw))


def adopt_dataset(name: str, obj: object) -> DatasetSpec:
    """A plugin's :class:`DatasetSpec` under the entry point's ``name`` (its own ``id`` is replaced)."""
    if not isinstance(obj, DatasetSpec):
        raise PluginError(f"it names a {type(obj).__name__}, not a robustbench_zs.datasets.DatasetSpec")
    try:
        return dataclasses.replace(obj, id=name)
    except ValueError as e:
        raise PluginError(str(e)) from None


#: every dataset: ours, then other packages' (entry points in the group ``robustbench_zs.datasets``)
DATASETS: Registry[DatasetSpec] = Registry("dataset", group="robustbench_zs.datasets", adopt=adopt_dataset)
