"""Caltech-101 and Caltech-256 in torchvision's layout: one folder of JPEGs per category, no split files.

Both are evaluated on the whole dataset (protocol.md section 5). Caltech-101 drops the ``BACKGROUND_Google``
folder (101 classes); Caltech-256 keeps ``257.clutter`` (257 classes). Only the ``*.jpg`` files directly in a category
folder are images (Caltech-256 ships a stray ``198.spider/RENAME2`` and an empty ``056.dog/greg/`` folder).

``ensemble`` class names: Caltech-101 uses CLIP_benchmark's curated names (matched by folder name). CLIP_benchmark
has none for Caltech-256, so ours are derived from the folder name: the ``NNN.`` prefix and a trailing ``-101`` are
removed, ``-`` and ``_`` become spaces, and ``metadata/caltech256_fixes.json`` replaces the names that are not natural English
(proper nouns, joined words, plurals after "a", and the categories taken over from Caltech-101 whose folder name
says how the object is shown, such as ``faces-easy-101`` -> "face").
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from .files import FileImageDataset, check_class_count, missing, no_split
from .spec import DATASETS, DatasetSpec, ImageDataset, clean_classname, load_metadata, underscores_to_spaces

BACKGROUND = "BACKGROUND_Google"
PREFIX = re.compile(r"^\d{3}\.")


def strip_number(folder: str) -> str:
    """``"001.ak47"`` -> ``"ak47"`` (names without the ``NNN.`` prefix are returned unchanged)."""
    return PREFIX.sub("", folder)


def caltech256_paper_names(raw: list[str]) -> list[str]:
    """The official code's names: the ``NNN.`` prefix stripped, then the generic clean-up (``bonsai-101`` -> ``bonsai 101``)."""
    return [clean_classname(strip_number(c)) for c in raw]


def caltech256_ensemble_name(folder: str) -> str:
    name = strip_number(folder)
    name = name.removesuffix("-101").replace("-", " ").replace("_", " ")
    return load_metadata("caltech256_fixes")["fixes"].get(name, name)


@cache
def caltech101_curated() -> dict[str, str]:
    """Caltech-101 folder name -> CLIP_benchmark's curated name (its list follows the sorted folders, background first)."""
    folders = load_metadata("classlists/caltech101")["classnames"]
    curated = load_metadata("clip_benchmark_en")["classnames"]["caltech101"]
    return dict(zip([BACKGROUND, *folders], curated, strict=True))


def caltech101_ensemble_names(data: ImageDataset) -> list[str]:
    curated = caltech101_curated()
    fallback = underscores_to_spaces(data)
    return [curated.get(c, f) for c, f in zip(data.classnames, fallback, strict=True)]


def _jpgs(folder: Path) -> list[Path]:
    """The ``*.jpg`` files directly in ``folder``, sorted by name (stray files and subfolders are skipped)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.is_file())


def _category_loader(spec_id: str, folder: str, images: str, exclude: frozenset[str]):
    def load(data_root: Path, split: str) -> FileImageDataset:
        spec = DATASETS.get(spec_id)
        if split not in spec.splits:
            raise no_split(spec, split)
        base = Path(data_root) / folder
        if not base.is_dir():
            raise missing(spec, base, f"no folder {folder}")
        cat_dir = base / images
        if not cat_dir.is_dir():
            raise missing(spec, base, f"no {images}/ folder")
        classes = sorted(
            p.name for p in cat_dir.iterdir() if p.is_dir() and p.name not in exclude and not p.name.startswith(".")
        )
        check_class_count(spec, len(classes), base, f"{images}/ category folders")
        samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            files = _jpgs(cat_dir / name)
            if not files:
                raise missing(spec, base, f"no *.jpg images in {images}/{name}")
            samples.extend((p, label) for p in files)
        return FileImageDataset(samples, classes, root=base)

    return load


DATASETS.add(
    "caltech101",
    DatasetSpec(
        id="caltech101",
        name="Caltech-101",
        num_classes=101,
        splits=("all",),
        eval_split="all",
        templates=("A photo of a {}.",),
        folder="caltech101",
        classnames=None,  # the sorted category folders minus BACKGROUND_Google
        layout=(
            "<data-root>/caltech101/101_ObjectCategories/<category>/image_<4 digits>.jpg "
            "(torchvision's layout; BACKGROUND_Google is skipped)"
        ),
        source="https://data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip)",
        loader=_category_loader("caltech101", "caltech101", "101_ObjectCategories", frozenset({BACKGROUND})),
        ensemble_templates="caltech101",
        ensemble_names=caltech101_ensemble_names,
        manual_steps=(
            "wget -O caltech-101.zip 'https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1' "
            "&& unzip -q caltech-101.zip && mkdir -p <data-root>/caltech101 && "
            "tar -xzf caltech-101/101_ObjectCategories.tar.gz -C <data-root>/caltech101 "
            "(leaves <data-root>/caltech101/101_ObjectCategories/<category>/image_0001.jpg ...)"
        ),
    ),
)

DATASETS.add(
    "caltech256",
    DatasetSpec(
        id="caltech256",
        name="Caltech-256",
        num_classes=257,
        splits=("all",),
        eval_split="all",
        templates=("A photo of a {}.",),
        folder="caltech256",
        classnames=None,  # the sorted category folders, 001.ak47 .. 257.clutter
        layout=(
            "<data-root>/caltech256/256_ObjectCategories/<NNN.name>/<NNN>_<4 digits>.jpg "
            "(torchvision's layout; 257 folders including 257.clutter)"
        ),
        source="https://data.caltech.edu/records/nyy15-4j048 (256_ObjectCategories.tar)",
        loader=_category_loader("caltech256", "caltech256", "256_ObjectCategories", frozenset()),
        paper_names=caltech256_paper_names,
        ensemble_templates="caltech101",
        ensemble_names=lambda data: [caltech256_ensemble_name(c) for c in data.classnames],
        manual_steps=(
            "wget -O 256_ObjectCategories.tar "
            "'https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar?download=1' && "
            "mkdir -p <data-root>/caltech256 && tar -xf 256_ObjectCategories.tar -C <data-root>/caltech256 "
            "(leaves <data-root>/caltech256/256_ObjectCategories/001.ak47/001_0001.jpg ...)"
        ),
    ),
)
