"""Food-101 in torchvision's ``food-101`` layout: the official ``food-101.tar.gz`` unpacked as is.

``meta/<split>.json`` maps each class to its images as ``"<class>/<id>"`` (no extension); the image is
``images/<class>/<id>.jpg``. As torchvision reads it, labels index the sorted keys of the json, and the samples
follow the json's order (class by class, in the order of each list).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZSBenchError
from .files import (
    FileImageDataset,
    check_class_count,
    no_split,
    read_text,
    require_files,
    require_present,
    torchvision_download,
)
from .spec import DATASETS, DatasetSpec, ImageDataset

FOLDER = "food-101"
NUM_CLASSES = 101


def read_split_json(path: Path) -> dict[str, list[str]]:
    """``meta/<split>.json`` as {class: ["<class>/<id>", ...]} in file order; a malformed file is one line."""
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ZSBenchError(
            f"corrupt metadata file {path}: line {e.lineno} column {e.colno}: {e.msg}; re-download it"
        ) from None
    if not isinstance(meta, dict):
        raise ZSBenchError(f"corrupt metadata file {path}: expected an object mapping class -> list of images")
    for cls, entries in meta.items():
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip("/") for e in entries):
            raise ZSBenchError(
                f"corrupt metadata file {path}: class {cls!r}: expected a list of '<class>/<id>' strings"
            )
    return meta


def load_food101(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("food101")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    listed = f"meta/{split}.json"
    require_files(spec, base, [listed, "images"])
    meta = read_split_json(base / listed)
    classes = sorted(meta)
    check_class_count(spec, len(classes), base, listed)
    index = {c: i for i, c in enumerate(classes)}
    images = base / "images"
    samples = [(images.joinpath(*f"{rel}.jpg".split("/")), index[cls]) for cls, rels in meta.items() for rel in rels]
    require_present(spec, base, samples, listed)
    return FileImageDataset(samples, classes, root=base)


DATASETS.add(
    "food101",
    DatasetSpec(
        id="food101",
        name="Food-101",
        num_classes=NUM_CLASSES,
        splits=("test", "train"),
        eval_split="test",
        templates=("A photo of {}, a type of food.",),
        folder=FOLDER,
        layout=(
            "<data-root>/food-101/{meta/classes.txt, meta/test.json, meta/train.json, images/<class>/<id>.jpg} "
            "(torchvision's layout)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.Food101('<data-root>', split='test', "
            'download=True)" (http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz)'
        ),
        loader=load_food101,
        ensemble_templates="food101",
        download=torchvision_download("Food101", {"split": "test"}),
    ),
)
