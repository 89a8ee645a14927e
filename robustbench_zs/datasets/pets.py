"""Oxford-IIIT Pets in torchvision's ``oxford-iiit-pet`` layout (the official images and annotations archives).

``annotations/<split>.txt`` lines are ``<image id> <class id> <species> <breed id>`` (``Abyssinian_100 1 1 1``),
class ids 1-based; the image is ``images/<image id>.jpg``. Class names are made as torchvision makes them: the
image-id prefix before the last ``_`` of each class id, split on ``_`` and title-cased (``American Bulldog``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ZSBenchError
from .files import (
    FileImageDataset,
    check_class_count,
    no_split,
    read_lines,
    require_files,
    require_present,
    torchvision_download,
)
from .spec import DATASETS, DatasetSpec, ImageDataset, load_metadata

FOLDER = "oxford-iiit-pet"
NUM_CLASSES = 37


def read_split(path: Path, num_classes: int = NUM_CLASSES) -> tuple[list[str], list[int], list[str]]:
    """(image ids, 0-based labels, raw class names in label order) of an ``annotations/<split>.txt`` file."""
    ids: list[str] = []
    labels: list[int] = []
    prefix_of: dict[int, str] = {}
    for line in read_lines(path):
        if line.startswith("#"):  # list.txt-style comment lines
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= num_classes or "_" not in parts[0]:
            raise ZSBenchError(
                f"corrupt metadata file {path}: bad line {line!r} "
                f"(expected '<Breed>_<n> <class id 1..{num_classes}> <species> <breed id>')"
            )
        label = int(parts[1]) - 1
        prefix = parts[0].rsplit("_", 1)[0]
        if prefix_of.setdefault(label, prefix) != prefix:
            raise ZSBenchError(
                f"corrupt metadata file {path}: bad line {line!r} (class id {label + 1} is {prefix_of[label]!r})"
            )
        ids.append(parts[0])
        labels.append(label)
    # torchvision: the (prefix, class id) pairs sorted by class id; a split missing a class gives fewer names
    names = [" ".join(part.title() for part in prefix_of[k].split("_")) for k in sorted(prefix_of)]
    return ids, labels, names


def load_pets(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("oxfordpets")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    listed = f"annotations/{split}.txt"
    require_files(spec, base, [listed, "images"])
    ids, labels, names = read_split(base / listed)
    check_class_count(spec, len(names), base, listed)
    samples = [(base / "images" / f"{i}.jpg", y) for i, y in zip(ids, labels, strict=True)]
    require_present(spec, base, samples, listed)
    return FileImageDataset(samples, names, root=base)


DATASETS.add(
    "oxfordpets",
    DatasetSpec(
        id="oxfordpets",
        name="Oxford-IIIT Pets",
        num_classes=NUM_CLASSES,
        splits=("test", "trainval"),
        eval_split="test",
        templates=("A photo of a {}, a type of pet.",),
        folder=FOLDER,
        layout=(
            "<data-root>/oxford-iiit-pet/{annotations/test.txt, annotations/trainval.txt, images/<ImageId>.jpg} "
            "(torchvision's layout)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.OxfordIIITPet('<data-root>', split='test', "
            'download=True)" (https://www.robots.ox.ac.uk/~vgg/data/pets/)'
        ),
        loader=load_pets,
        ensemble_templates="pets",
        ensemble_names=lambda data: list(load_metadata("clip_benchmark_en")["classnames"]["pets"]),
        download=torchvision_download("OxfordIIITPet", {"split": "test"}),
    ),
)
