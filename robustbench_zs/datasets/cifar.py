"""CIFAR-10 and CIFAR-100 from torchvision's on-disk layout (the python pickle release)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from .files import missing as missing_files
from .files import torchvision_download
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, TensorImageDataset, load_metadata

# numpy's array reconstruction is all a CIFAR pickle needs; anything else in the file is refused.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2 (files re-saved after download)
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ZSBenchError(f"corrupt CIFAR file {path}: {e}; delete the folder and download it again") from None


def _get(d: object, key: str):
    if not isinstance(d, dict):
        return None
    return d.get(key, d.get(key.encode()))


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) of one batch file, or a one-line error naming the file."""
    batch = _load_pickle(path)
    data, lab = _get(batch, "data"), _get(batch, label_key)
    if data is None or lab is None:
        raise ZSBenchError(f"corrupt CIFAR file {path}: no 'data' or '{label_key}' entry")
    try:
        data = np.asarray(data, dtype=np.uint8)
        y = np.asarray(lab, dtype=np.int64)
    except (ValueError, TypeError) as e:
        raise ZSBenchError(f"corrupt CIFAR file {path}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) == 0:
        raise ZSBenchError(f"corrupt CIFAR file {path}: 'data' has shape {data.shape}, expected (N > 0, 3072)")
    if y.shape != (len(data),):
        raise ZSBenchError(f"corrupt CIFAR file {path}: {len(data)} images but {y.size} labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise ZSBenchError(f"corrupt CIFAR file {path}: labels outside [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), y


def _loader(folder: str, files: dict[str, list[str]], meta: str, label_key: str, spec_id: str):
    def load(data_root: Path, split: str) -> TensorImageDataset:
        spec = DATASETS.get(spec_id)
        if split not in files:
            raise ZSBenchError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")
        base = Path(data_root) / folder
        needed = [*files[split], meta]
        missing = [n for n in needed if not (base / n).is_file()]
        if missing:
            raise missing_files(spec, base, f"{base.name} lacks {', '.join(missing)}")
        parts = [_read_batch(base / name, label_key, spec.num_classes) for name in files[split]]
        names = _get(_load_pickle(base / meta), "fine_label_names" if label_key == "fine_labels" else "label_names")
        if names is None or len(names) != spec.num_classes:
            raise ZSBenchError(f"corrupt CIFAR meta file {base / meta}: expected {spec.num_classes} class names")
        images = np.concatenate([x for x, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        return TensorImageDataset(images, labels, list(spec.classnames), root=base)

    return load


DATASETS.add(
    "cifar10",
    DatasetSpec(
        id="cifar10",
        name="CIFAR-10",
        num_classes=10,
        splits=("test", "train"),
        eval_split="test",
        templates=(GENERIC_TEMPLATE,),
        classnames=tuple(load_metadata("cifar10_classnames")["classnames"]),
        native_size=(32, 32),
        paper_preprocess="native",
        ensemble_templates="cifar10",
        download=torchvision_download("CIFAR10", {"train": False}, {"train": True}),
        folder="cifar-10-batches-py",
        layout="<data-root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (torchvision's layout)",
        source=(
            "python -c \"import torchvision; torchvision.datasets.CIFAR10('<data-root>', train=False, download=True)\" "
            "(https://www.cs.toronto.edu/~kriz/cifar.html)"
        ),
        loader=_loader(
            "cifar-10-batches-py",
            {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]},
            "batches.meta",
            "labels",
            "cifar10",
        ),
    ),
)

DATASETS.add(
    "cifar100",
    DatasetSpec(
        id="cifar100",
        name="CIFAR-100",
        num_classes=100,
        splits=("test", "train"),
        eval_split="test",
        templates=(GENERIC_TEMPLATE,),
        classnames=tuple(load_metadata("cifar100_classnames")["classnames"]),
        native_size=(32, 32),
        paper_preprocess="native",
        paper_train_preprocess="resize256_crop224",  # PMG_AFT.py: CIFAR100(train=True, transform=preprocess224)
        ensemble_templates="cifar100",
        download=torchvision_download("CIFAR100", {"train": False}, {"train": True}),
        folder="cifar-100-python",
        layout="<data-root>/cifar-100-python/{train,test,meta} (torchvision's layout)",
        source=(
            "python -c \"import torchvision; torchvision.datasets.CIFAR100('<data-root>', train=False, download=True)\" "
            "(https://www.cs.toronto.edu/~kriz/cifar.html)"
        ),
        loader=_loader("cifar-100-python", {"test": ["test"], "train": ["train"]}, "meta", "fine_labels", "cifar100"),
    ),
)
