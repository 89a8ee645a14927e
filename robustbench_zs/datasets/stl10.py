"""STL-10 in torchvision's ``stl10_binary`` layout (the official binary release, unpacked as is).

``<split>_X.bin`` holds uint8 images of 3x96x96 bytes each, every channel stored column-major (torchvision reads
``reshape(-1, 3, 96, 96)`` and swaps the last two axes); ``<split>_y.bin`` one uint8 label per image, 1-based.
``class_names.txt`` lists the 10 names in label order. The images are memory-mapped, not read into RAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ZSBenchError
from .files import ArrayFilesDataset, no_split, read_lines, require_files, torchvision_download
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec

FOLDER = "stl10_binary"
NUM_CLASSES = 10
SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE
FILES = {"test": ("test_X.bin", "test_y.bin"), "train": ("train_X.bin", "train_y.bin")}
CLASS_FILE = "class_names.txt"


class STL10Dataset(ArrayFilesDataset):
    """One labelled split of the binary release; images are read from a memory map on access.

    The map is opened lazily and dropped when pickled, so the dataset goes to DataLoader worker processes cheaply.
    """

    def __init__(self, x_path: Path, y_path: Path, classnames: list[str], root: Path) -> None:
        size = x_path.stat().st_size
        if size == 0 or size % IMAGE_BYTES:
            raise ZSBenchError(
                f"corrupt STL-10 file {x_path}: {size} bytes is not a positive multiple of {IMAGE_BYTES} "
                f"(3x{SIZE}x{SIZE} per image); re-download it"
            )
        n = size // IMAGE_BYTES
        raw = np.fromfile(y_path, dtype=np.uint8)
        if len(raw) != n:
            raise ZSBenchError(
                f"corrupt STL-10 file {y_path}: {len(raw)} labels for the {n} images of {x_path.name}; re-download it"
            )
        if raw.min() < 1 or raw.max() > NUM_CLASSES:
            raise ZSBenchError(f"corrupt STL-10 file {y_path}: labels outside 1..{NUM_CLASSES}; re-download it")
        self.x_path = x_path
        self.y_path = y_path
        self._labels = raw.astype(np.int64) - 1
        self.classnames = list(classnames)
        self.root = root
        self._x: np.memmap | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_x"] = None  # each process maps the file itself
        return state

    def _images(self) -> np.memmap:
        if self._x is None:
            self._x = np.memmap(self.x_path, dtype=np.uint8, mode="r", shape=(len(self._labels), 3, SIZE, SIZE))
        return self._x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = np.ascontiguousarray(self._images()[i].transpose(0, 2, 1))  # column-major channels -> (3, H, W)
        return torch.from_numpy(img), int(self._labels[i])


def load_stl10(data_root: Path, split: str) -> STL10Dataset:
    spec = DATASETS.get("stl10")
    if split not in FILES:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    x_name, y_name = FILES[split]
    require_files(spec, base, [x_name, y_name, CLASS_FILE])
    names = read_lines(base / CLASS_FILE)
    if len(names) != NUM_CLASSES:
        raise ZSBenchError(
            f"corrupt metadata file {base / CLASS_FILE}: {len(names)} class names, expected {NUM_CLASSES}"
        )
    return STL10Dataset(base / x_name, base / y_name, names, root=base)


DATASETS.add(
    "stl10",
    DatasetSpec(
        id="stl10",
        name="STL-10",
        num_classes=NUM_CLASSES,
        splits=("test", "train"),
        eval_split="test",
        templates=(GENERIC_TEMPLATE,),
        folder=FOLDER,
        layout=(
            "<data-root>/stl10_binary/{test_X.bin, test_y.bin, train_X.bin, train_y.bin, class_names.txt} "
            "(torchvision's layout)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.STL10('<data-root>', split='test', download=True)\" "
            "(https://cs.stanford.edu/~acoates/stl10/)"
        ),
        loader=load_stl10,
        native_size=(SIZE, SIZE),
        paper_preprocess="native",
        ensemble_templates="stl10",
        download=torchvision_download("STL10", {"split": "test"}, {"split": "train"}),
    ),
)
