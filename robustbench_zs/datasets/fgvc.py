"""FGVC-Aircraft (2013b) at the variant level, in torchvision's layout (the official archive unpacked as is).

Classes are the lines of ``data/variants.txt`` in file order (100 variants); ``data/images_variant_<split>.txt``
lines are ``<7-digit image id> <variant name>`` (the name may contain spaces), the image ``data/images/<id>.jpg``.
Images keep the 20-pixel copyright banner at the bottom, as torchvision (and so the official code) leaves it.
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
from .spec import DATASETS, DatasetSpec, ImageDataset

FOLDER = "fgvc-aircraft-2013b"
NUM_CLASSES = 100


def read_variants(path: Path) -> list[str]:
    names = read_lines(path)
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ZSBenchError(f"corrupt metadata file {path}: variant {dup!r} is listed twice")
    return names


def read_split(path: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(image id, label) of each line of ``images_variant_<split>.txt``."""
    rows: list[tuple[str, int]] = []
    for line in read_lines(path):
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[0].isalnum():
            raise ZSBenchError(f"corrupt metadata file {path}: bad line {line!r} (expected '<image id> <variant>')")
        if parts[1] not in index:
            raise ZSBenchError(f"corrupt metadata file {path}: bad line {line!r} (variant not in variants.txt)")
        rows.append((parts[0], index[parts[1]]))
    return rows


def load_fgvc_aircraft(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("fgvc_aircraft")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    listed = f"data/images_variant_{split}.txt"
    require_files(spec, base, ["data/variants.txt", listed, "data/images"])
    names = read_variants(base / "data" / "variants.txt")
    check_class_count(spec, len(names), base, "data/variants.txt")
    rows = read_split(base / listed, {n: i for i, n in enumerate(names)})
    samples = [(base / "data" / "images" / f"{image_id}.jpg", label) for image_id, label in rows]
    require_present(spec, base, samples, listed)
    return FileImageDataset(samples, names, root=base)


def paper_names(raw: list[str]) -> list[str]:
    """The official code's rule: ``Boeing `` before the names starting with ``7``, then only ``lower()``."""
    return [("Boeing " + c if c.startswith("7") else c).lower() for c in raw]


DATASETS.add(
    "fgvc_aircraft",
    DatasetSpec(
        id="fgvc_aircraft",
        name="FGVC-Aircraft",
        num_classes=NUM_CLASSES,
        splits=("test", "trainval"),
        eval_split="test",
        templates=("A photo of a {}, a type of aircraft.",),
        folder=FOLDER,
        layout=(
            "<data-root>/fgvc-aircraft-2013b/data/{variants.txt, images_variant_test.txt, "
            "images_variant_trainval.txt, images/<id>.jpg} (torchvision's layout)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.FGVCAircraft('<data-root>', split='test', "
            "annotation_level='variant', download=True)\" "
            "(https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz)"
        ),
        loader=load_fgvc_aircraft,
        paper_names=paper_names,
        ensemble_templates="fgvc_aircraft",
        ensemble_names=lambda data: list(data.classnames),
        download=torchvision_download("FGVCAircraft", {"split": "test", "annotation_level": "variant"}),
    ),
)
