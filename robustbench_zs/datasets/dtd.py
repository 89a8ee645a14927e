"""DTD (Describable Textures) in torchvision's ``dtd`` layout: the official ``dtd-r1.0.1.tar.gz`` unpacked into ``dtd``.

``dtd/dtd/labels/<split><k>.txt`` lists ``<class>/<class>_<nnnn>.jpg`` lines of partition ``k``; the images are
``dtd/dtd/images/<line>``. The official protocol evaluates partition 1. Labels index the 47 sorted class folders
(the same as torchvision's sorted classes of the list); samples keep the list's order, as torchvision reads it.
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

FOLDER = "dtd"
NUM_CLASSES = 47
PARTITION = 1


def read_list(path: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(``<class>/<file>`` line, label) of a split list; a line with an unknown class is one error naming it."""
    rows = []
    for lineno, line in enumerate(read_lines(path), 1):
        parts = line.split("/")
        if len(parts) != 2 or not parts[1] or parts[0] not in index:
            raise ZSBenchError(
                f"corrupt metadata file {path}:{lineno}: bad line {line!r} "
                "(expected '<class>/<class>_<nnnn>.jpg' with a class folder of images/)"
            )
        rows.append((line, index[parts[0]]))
    return rows


def load_dtd(data_root: Path, split: str, partition: int = PARTITION) -> ImageDataset:
    spec = DATASETS.get("dtd")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    listed = f"dtd/labels/{split}{partition}.txt"
    require_files(spec, base, ["dtd/images", listed])
    images = base / "dtd" / "images"
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    check_class_count(spec, len(classes), base, "dtd/images/<class> folders")
    rows = read_list(base / listed, {c: i for i, c in enumerate(classes)})
    samples = [(images / Path(line), label) for line, label in rows]
    require_present(spec, base, samples, listed)
    return FileImageDataset(samples, classes, root=base)


DATASETS.add(
    "dtd",
    DatasetSpec(
        id="dtd",
        name="DTD",
        num_classes=NUM_CLASSES,
        splits=("test", "train", "val"),
        eval_split="test",
        templates=("A surface with a {} texture.",),
        folder=FOLDER,
        layout=(
            "<data-root>/dtd/dtd/{images/<class>/<class>_<nnnn>.jpg, labels/{train,val,test}1.txt} "
            "(torchvision's layout; partition 1)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.DTD('<data-root>', split='test', partition=1, "
            'download=True)" (https://www.robots.ox.ac.uk/~vgg/data/dtd/)'
        ),
        loader=load_dtd,
        ensemble_templates="dtd",
        download=torchvision_download("DTD", {"split": "test", "partition": 1}),
    ),
)
