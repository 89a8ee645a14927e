"""PatchCamelyon (PCAM) in torchvision's ``pcam`` layout: the official HDF5 files, gunzipped.

``camelyonpatch_level_2_split_<split>_x.h5`` holds dataset ``x`` (N, 96, 96, 3) uint8 and ``..._y.h5`` dataset ``y``
(N, 1, 1, 1) uint8 (0 = no metastatic tissue, 1 = tumor). Labels are read once; images are read per item from an
HDF5 handle opened lazily in each process (the dataset pickles without it, for DataLoader workers).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import ZSBenchError
from .files import ArrayFilesDataset, missing, no_split
from .spec import DATASETS, DatasetSpec, load_metadata

FOLDER = "pcam"
NUM_CLASSES = 2
SIZE = 96
#: split -> the name part of torchvision's file names
SPLIT_FILES = {"test": "test", "train": "train", "val": "valid"}
#: raw class names in label order
CLASSNAMES = ("healthy lymph node tissue", "lymph node tumor tissue")
#: The official PMG-AFT code's two fixed prompts (``metadata/pmg_aft_prompts.json``), kept exactly,
#: including the "Tthis" typo of the first one.
PAPER_PROMPTS = tuple(load_metadata("pmg_aft_prompts")["pcam"]["prompts"])
ZENODO = "https://zenodo.org/records/2546921"


def file_names(split: str) -> tuple[str, str]:
    """(images file, labels file) of a split, as torchvision names them."""
    stem = f"camelyonpatch_level_2_split_{SPLIT_FILES[split]}"
    return f"{stem}_x.h5", f"{stem}_y.h5"


def _read_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of dataset ``key`` of an HDF5 file; a truncated or foreign file is one line naming it."""
    try:
        with h5py.File(path, "r") as f:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ZSBenchError(f"corrupt PCAM file {path}: no dataset {key!r}; re-download it")
            return tuple(f[key].shape), f[key].dtype
    except ZSBenchError:
        raise
    except Exception as e:  # OSError for a truncated or non-HDF5 file, and h5py's other errors
        msg = str(e).splitlines()[0] if str(e) else repr(e)
        raise ZSBenchError(f"corrupt PCAM file {path}: {msg}; re-download it") from None


class PCAMDataset(ArrayFilesDataset):
    """One split of PCAM: labels in memory, images read from the HDF5 file on access."""

    def __init__(self, x_path: Path, y_path: Path, root: Path) -> None:
        x_shape, x_dtype = _read_shape(x_path, "x")
        if len(x_shape) != 4 or x_shape[1:] != (SIZE, SIZE, 3) or x_dtype != np.uint8 or x_shape[0] == 0:
            raise ZSBenchError(
                f"corrupt PCAM file {x_path}: dataset 'x' is {x_dtype} {x_shape}, expected uint8 (N, 96, 96, 3)"
            )
        y_shape, _ = _read_shape(y_path, "y")
        if len(y_shape) == 0 or y_shape[0] != x_shape[0] or int(np.prod(y_shape[1:])) != 1:
            raise ZSBenchError(
                f"corrupt PCAM file {y_path}: dataset 'y' has shape {y_shape}, expected ({x_shape[0]}, 1, 1, 1) "
                f"to match {x_path.name}"
            )
        try:
            with h5py.File(y_path, "r") as f:
                labels = np.asarray(f["y"][...]).reshape(-1).astype(np.int64)
        except Exception as e:
            raise ZSBenchError(f"corrupt PCAM file {y_path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ZSBenchError(f"corrupt PCAM file {y_path}: labels outside [0, {NUM_CLASSES}); re-download it")
        self.x_path = x_path
        self.y_path = y_path
        self._labels = labels
        self.classnames = list(CLASSNAMES)
        self.root = root
        self._file = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None  # HDF5 handles neither pickle nor survive a fork: each process opens its own
        state["_pid"] = None
        return state

    def _images(self):
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.x_path, "r")
            except Exception as e:
                raise ZSBenchError(f"corrupt PCAM file {self.x_path}: {str(e).splitlines()[0]}") from None
            self._pid = os.getpid()
        return self._file["x"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        x = self._images()
        try:
            img = np.asarray(x[int(i) % len(self)], dtype=np.uint8)
        except Exception as e:  # a damaged chunk inside an otherwise readable file
            msg = str(e).splitlines()[0] if str(e) else repr(e)
            raise ZSBenchError(f"corrupt PCAM file {self.x_path}: cannot read image {i}: {msg}") from None
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self._labels[i])


def load_pcam(data_root: Path, split: str) -> PCAMDataset:
    spec = DATASETS.get("pcam")
    if split not in SPLIT_FILES:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise missing(spec, base, f"no folder {FOLDER}")
    absent = []
    for name in file_names(split):
        if not (base / name).is_file():
            packed = (base / f"{name}.gz").is_file()
            absent.append(f"{name} (found {name}.gz: gunzip it)" if packed else name)
    if absent:
        raise missing(spec, base, f"missing {', '.join(absent)}")
    x_name, y_name = file_names(split)
    return PCAMDataset(base / x_name, base / y_name, root=base)


DATASETS.add(
    "pcam",
    DatasetSpec(
        id="pcam",
        name="PCAM",
        num_classes=NUM_CLASSES,
        splits=("test", "train", "val"),
        eval_split="test",
        templates=("{}",),
        folder=FOLDER,
        layout=(
            "<data-root>/pcam/camelyonpatch_level_2_split_{test,train,valid}_{x,y}.h5 "
            "(torchvision's layout; the official files, gunzipped)"
        ),
        source=f"{ZENODO} (PatchCamelyon; camelyonpatch_level_2_split_test_{{x,y}}.h5.gz, gunzipped)",
        loader=load_pcam,
        paper_names=lambda raw: list(PAPER_PROMPTS),
        ensemble_templates="pcam",
        ensemble_names=lambda data: list(load_metadata("clip_benchmark_en")["classnames"]["pcam"]),
        native_size=(SIZE, SIZE),
        manual_steps=(
            "mkdir -p <data-root>/pcam && cd <data-root>/pcam && for f in camelyonpatch_level_2_split_test_x.h5 "
            f'camelyonpatch_level_2_split_test_y.h5; do wget -O $f.gz "{ZENODO}/files/$f.gz?download=1" && '
            "gunzip $f.gz; done (the evaluation split from the Zenodo record; the train and valid files of the same "
            "record, gunzipped alongside, give the other splits)"
        ),
    ),
)
