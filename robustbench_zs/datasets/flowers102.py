"""Oxford Flowers-102 in torchvision's ``flowers-102`` layout (the official ``102flowers.tgz`` and two .mat files).

``imagelabels.mat`` holds ``labels`` (one 1-based class per image; image ``i`` is ``jpg/image_%05d.jpg``) and
``setid.mat`` the 1-based image ids of each split (``trnid``, ``valid``, ``tstid``), read in file order as
torchvision does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from .files import FileImageDataset, load_mat, no_split, require_files, require_present, torchvision_download
from .spec import DATASETS, DatasetSpec, ImageDataset, load_metadata

FOLDER = "flowers-102"
NUM_CLASSES = 102
SPLIT_KEYS = {"test": "tstid", "train": "trnid", "val": "valid"}

#: The official PMG-AFT code's class names in label order (``metadata/pmg_aft_prompts.json``), kept exactly,
#: including its quirks ("colts foot", "pink-yellow dahlia?", trailing spaces of "cyclamen " and "hippeastrum "):
#: they are what that code put in its prompts.
CLASSNAMES = tuple(load_metadata("pmg_aft_prompts")["flowers102"]["classnames"])


def paper_names(raw: list[str]) -> list[str]:
    """The official code's rule: ``label.lower().replace('_',' ').replace('-',' ')`` (``hard leaved pocket orchid``)."""
    return [c.lower().replace("_", " ").replace("-", " ") for c in raw]


def _int_vector(mat: dict, key: str, path: Path) -> np.ndarray:
    """``mat[key]`` as a 1-D int64 array of whole positive numbers, or a one-line error naming the file."""
    if key not in mat:
        raise ZSBenchError(f"corrupt MATLAB file {path}: no {key!r} entry; re-download it")
    try:
        values = np.atleast_1d(np.asarray(mat[key], dtype=np.float64))
    except (TypeError, ValueError):
        raise ZSBenchError(f"corrupt MATLAB file {path}: {key!r} is not numeric; re-download it") from None
    if values.ndim != 1 or values.size == 0 or np.any(values != np.round(values)) or np.any(values < 1):
        raise ZSBenchError(f"corrupt MATLAB file {path}: {key!r} is not a list of positive whole numbers")
    return values.astype(np.int64)


def load_flowers102(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("flowers102")
    if split not in SPLIT_KEYS:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    require_files(spec, base, ["imagelabels.mat", "setid.mat", "jpg"])
    labels = _int_vector(load_mat(base / "imagelabels.mat"), "labels", base / "imagelabels.mat")
    if labels.max() > NUM_CLASSES:
        raise ZSBenchError(
            f"corrupt MATLAB file {base / 'imagelabels.mat'}: labels outside [1, {NUM_CLASSES}]; re-download it"
        )
    ids = _int_vector(load_mat(base / "setid.mat"), SPLIT_KEYS[split], base / "setid.mat")
    if ids.max() > len(labels):
        raise ZSBenchError(
            f"corrupt MATLAB file {base / 'setid.mat'}: {SPLIT_KEYS[split]!r} has image id {ids.max()} but "
            f"imagelabels.mat labels only {len(labels)} images"
        )
    samples = [(base / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids.tolist()]
    require_present(spec, base, samples, f"setid.mat ({SPLIT_KEYS[split]})")
    return FileImageDataset(samples, list(CLASSNAMES), root=base)


DATASETS.add(
    "flowers102",
    DatasetSpec(
        id="flowers102",
        name="Flowers-102",
        num_classes=NUM_CLASSES,
        splits=("test", "train", "val"),
        eval_split="test",
        templates=("A photo of a {}, a type of flower.",),
        classnames=CLASSNAMES,
        folder=FOLDER,
        layout="<data-root>/flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat} (torchvision's layout)",
        source=(
            "python -c \"import torchvision; torchvision.datasets.Flowers102('<data-root>', split='test', "
            'download=True)" (https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)'
        ),
        loader=load_flowers102,
        paper_names=paper_names,
        ensemble_templates="flowers",
        ensemble_names=lambda data: list(load_metadata("clip_benchmark_en")["classnames"]["flowers"]),
        download=torchvision_download("Flowers102", {"split": "test"}),
    ),
)
