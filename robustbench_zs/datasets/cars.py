"""Stanford Cars in torchvision's ``stanford_cars`` layout (devkit + images + the labelled test annotations).

``devkit/cars_meta.mat`` ``class_names`` (196 names, label = position) names the classes; the annotations
(``cars_test_annos_withlabels.mat`` for test, ``devkit/cars_train_annos.mat`` for train) are a struct array
``annotations`` with fields ``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class`` (1-based) and ``fname``, read in file
order as torchvision does. torchvision's download URL is dead, so the data is fetched by hand (``manual_steps``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from .files import FileImageDataset, check_class_count, load_mat, no_split, require_files, require_present
from .spec import DATASETS, DatasetSpec, ImageDataset, clean_classname

FOLDER = "stanford_cars"
NUM_CLASSES = 196
#: split -> (annotation file, image folder), relative to ``stanford_cars``
SPLIT_FILES = {
    "test": ("cars_test_annos_withlabels.mat", "cars_test"),
    "train": ("devkit/cars_train_annos.mat", "cars_train"),
}
_YEAR = re.compile(r"\s+\d{4}$")


def read_class_names(path: Path) -> list[str]:
    mat = load_mat(path)
    if "class_names" not in mat:
        raise ZSBenchError(f"corrupt MATLAB file {path}: no 'class_names' entry; re-download the devkit")
    names = np.atleast_1d(np.asarray(mat["class_names"], dtype=object)).tolist()
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ZSBenchError(f"corrupt MATLAB file {path}: 'class_names' is not a list of names")
    return names


def read_annotations(path: Path, num_classes: int = NUM_CLASSES) -> list[tuple[str, int]]:
    """(file name, 0-based label) of each entry of the ``annotations`` struct array, in file order."""
    mat = load_mat(path)
    if "annotations" not in mat:
        raise ZSBenchError(f"corrupt MATLAB file {path}: no 'annotations' entry; re-download it")
    entries = np.atleast_1d(np.asarray(mat["annotations"], dtype=object)).ravel().tolist()
    rows: list[tuple[str, int]] = []
    for k, a in enumerate(entries):
        fname, label = getattr(a, "fname", None), getattr(a, "class", None)
        if label is None and fname is not None:
            raise ZSBenchError(
                f"corrupt MATLAB file {path}: annotation {k + 1} has no 'class' field (the devkit's unlabelled "
                "cars_test_annos.mat? use cars_test_annos_withlabels.mat)"
            )
        try:
            label_int = int(label)
            ok = isinstance(fname, str) and bool(fname) and float(label) == label_int
        except (TypeError, ValueError):
            ok = False
        if not ok or not 1 <= label_int <= num_classes:
            raise ZSBenchError(
                f"corrupt MATLAB file {path}: annotation {k + 1} is not a (fname, class in 1..{num_classes}) entry"
            )
        rows.append((fname, label_int - 1))
    return rows


def load_stanfordcars(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("stanfordcars")
    if split not in SPLIT_FILES:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    annos, images = SPLIT_FILES[split]
    require_files(spec, base, ["devkit/cars_meta.mat", annos, images])
    names = read_class_names(base / "devkit" / "cars_meta.mat")
    check_class_count(spec, len(names), base, "devkit/cars_meta.mat")
    samples = [(base / images / fname, label) for fname, label in read_annotations(base / annos)]
    require_present(spec, base, samples, annos)
    return FileImageDataset(samples, names, root=base)


def paper_names(raw: list[str]) -> list[str]:
    """The official code's rule: cut the trailing year, then the generic clean-up (``am general hummer suv``)."""
    return [clean_classname(_YEAR.sub("", c)) for c in raw]


MANUAL_STEPS = (
    "mkdir -p <data-root>/stanford_cars && cd <data-root>/stanford_cars && "
    "kaggle datasets download -d jessicali9530/stanford-cars-dataset && unzip -q stanford-cars-dataset.zip && "
    "for d in cars_train cars_test; do if [ -d $d/$d ]; then mv $d/$d $d.flat && rmdir $d && mv $d.flat $d; fi; "
    "done && wget https://github.com/pytorch/vision/files/11644847/car_devkit.tgz && tar -xzf car_devkit.tgz; "
    "then save cars_test_annos_withlabels.mat (the labelled test annotations, linked from "
    "https://github.com/pytorch/vision/issues/7545#issuecomment-1631441616) as "
    "<data-root>/stanford_cars/cars_test_annos_withlabels.mat "
    "(result: <data-root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
    "cars_test_annos_withlabels.mat, cars_test/00001.jpg ..., cars_train/00001.jpg ...})"
)

DATASETS.add(
    "stanfordcars",
    DatasetSpec(
        id="stanfordcars",
        name="Stanford Cars",
        num_classes=NUM_CLASSES,
        splits=("test", "train"),
        eval_split="test",
        templates=("A photo of a {}.",),
        folder=FOLDER,
        layout=(
            "<data-root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
            "cars_test_annos_withlabels.mat, cars_test/<00001>.jpg, cars_train/<00001>.jpg} (torchvision's layout)"
        ),
        source=(
            "Kaggle jessicali9530/stanford-cars-dataset (images) + car_devkit.tgz and cars_test_annos_withlabels.mat "
            "via https://github.com/pytorch/vision/issues/7545 "
            "(zsbench datasets download stanfordcars prints the steps)"
        ),
        loader=load_stanfordcars,
        paper_names=paper_names,
        ensemble_templates="cars",
        ensemble_names=lambda data: list(data.classnames),
        manual_steps=MANUAL_STEPS,
    ),
)
