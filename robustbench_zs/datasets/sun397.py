"""SUN397 in the layout of the official ``SUN397.tar.gz`` (what torchvision's ``SUN397`` downloads and unpacks).

The official PMG-AFT code evaluates the whole dataset (no split). Classes are the lines of ``ClassName.txt``
(``/a/abbey``, ``/a/apartment_building/outdoor``, ...), label = line index; the images of a class are the
``sun_*.jpg`` files in its folder (``SUN397/a/abbey/sun_<id>.jpg``), the pattern torchvision globs for.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ZSBenchError
from ..paths import contained
from .files import (
    FileImageDataset,
    check_class_count,
    missing,
    no_split,
    read_lines,
    require_files,
    torchvision_download,
)
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, ImageDataset

FOLDER = "SUN397"
NUM_CLASSES = 397
_LINE = re.compile(r"^/[a-z]/[^/\s][^\s]*$")


def class_lines(path: Path) -> list[str]:
    """The checked lines of ``ClassName.txt`` (``/a/abbey``); each is also the class folder under ``SUN397``."""
    lines = read_lines(path)
    seen: set[str] = set()
    for line in lines:
        if not _LINE.match(line) or "//" in line or line.endswith("/"):
            raise ZSBenchError(f"corrupt metadata file {path}: bad line {line!r} (expected '/<letter>/<class>')")
        if line in seen:
            raise ZSBenchError(f"corrupt metadata file {path}: line {line!r} appears twice")
        seen.add(line)
    return lines


def _is_image(p: Path) -> bool:
    return p.name.startswith("sun_") and p.name.endswith(".jpg") and p.is_file()


def load_sun397(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("sun397")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    require_files(spec, base, ["ClassName.txt"])
    lines = class_lines(base / "ClassName.txt")
    check_class_count(spec, len(lines), base, "ClassName.txt")
    names = [line[3:] for line in lines]  # raw names: minus the leading "/<letter>/"
    folders = [contained(base, line[1:], str(base / "ClassName.txt")) for line in lines]
    absent = [f for f in folders if not f.is_dir()]
    if absent:
        raise missing(
            spec,
            base,
            f"{len(absent)} class folders listed in ClassName.txt are missing, e.g. {absent[0].relative_to(base)}",
        )
    samples = [(p, label) for label, folder in enumerate(folders) for p in sorted(folder.iterdir()) if _is_image(p)]
    if not samples:
        raise missing(spec, base, "no sun_*.jpg images in the class folders")
    return FileImageDataset(samples, names, root=base)


def _ensemble_names(data: ImageDataset) -> list[str]:
    """CLIP_benchmark-style names: the raw names with ``_`` and ``/`` as spaces (``apartment building outdoor``)."""
    return [c.replace("_", " ").replace("/", " ") for c in data.classnames]


DATASETS.add(
    "sun397",
    DatasetSpec(
        id="sun397",
        name="SUN397",
        num_classes=NUM_CLASSES,
        splits=("all",),
        eval_split="all",
        templates=(GENERIC_TEMPLATE,),
        folder=FOLDER,
        layout=(
            "<data-root>/SUN397/{ClassName.txt, README.txt, <letter>/<class>/sun_<id>.jpg} "
            "(SUN397.tar.gz unpacked as is; torchvision's layout)"
        ),
        source=(
            "python -c \"import torchvision; torchvision.datasets.SUN397('<data-root>', download=True)\" "
            "(http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz)"
        ),
        loader=load_sun397,
        ensemble_templates="sun397",
        ensemble_names=_ensemble_names,
        download=torchvision_download("SUN397"),
    ),
)
