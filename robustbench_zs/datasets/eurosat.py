"""EuroSAT (RGB) in torchvision's ``eurosat`` layout: ``eurosat/2750/<Class>/<Class>_<n>.jpg``, 64x64 JPEGs.

The whole dataset is evaluated (there is no official split). As torchvision's ImageFolder reads it, the classes are
the sorted folder names and the samples are ordered by class, then by file name (plain string order).
"""

from __future__ import annotations

from pathlib import Path

from .files import (
    FileImageDataset,
    check_class_count,
    image_files,
    missing,
    no_split,
    require_files,
    torchvision_download,
)
from .spec import DATASETS, DatasetSpec, ImageDataset, load_metadata

FOLDER = "eurosat"
DATA = "2750"
NUM_CLASSES = 10
#: The class folders of the RGB release, sorted (= label order).
CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

#: The official PMG-AFT code's class names in label order (``metadata/pmg_aft_prompts.json``).
PAPER_CLASSNAMES = tuple(load_metadata("pmg_aft_prompts")["eurosat"]["classnames"])


def paper_names(raw: list[str]) -> list[str]:
    """The official code's names, through its rule ``lower().replace('_', ' ').replace('-', ' ')``."""
    return [n.lower().replace("_", " ").replace("-", " ") for n in PAPER_CLASSNAMES]


def load_eurosat(data_root: Path, split: str) -> ImageDataset:
    spec = DATASETS.get("eurosat")
    if split not in spec.splits:
        raise no_split(spec, split)
    base = Path(data_root) / FOLDER
    require_files(spec, base, [DATA])
    classes = sorted(p.name for p in (base / DATA).iterdir() if p.is_dir())
    check_class_count(spec, len(classes), base, f"{DATA}/<class> folders")
    if tuple(classes) != CLASSES:  # the paper and ensemble names are given per label position
        odd = sorted(set(classes) - set(CLASSES))
        raise missing(
            spec, base, f"unexpected class folders in {DATA}: {', '.join(odd)}; expected {', '.join(CLASSES)}"
        )
    samples = []
    for label, name in enumerate(classes):
        files = image_files(base / DATA / name)
        if not files:
            raise missing(spec, base, f"no images in {DATA}/{name}")
        samples.extend((p, label) for p in files)
    return FileImageDataset(samples, classes, root=base)


DATASETS.add(
    "eurosat",
    DatasetSpec(
        id="eurosat",
        name="EuroSAT",
        num_classes=NUM_CLASSES,
        splits=("all",),
        eval_split="all",
        templates=("A centered satellite photo of {}.",),
        folder=FOLDER,
        layout="<data-root>/eurosat/2750/<Class>/<Class>_<n>.jpg (torchvision's layout: the RGB EuroSAT.zip)",
        source=(
            "python -c \"import torchvision; torchvision.datasets.EuroSAT('<data-root>', download=True)\" "
            "(https://github.com/phelber/eurosat)"
        ),
        loader=load_eurosat,
        paper_names=paper_names,
        ensemble_templates="eurosat",
        ensemble_names=lambda data: list(load_metadata("clip_benchmark_en")["classnames"]["eurosat"]),
        native_size=(64, 64),
        download=torchvision_download("EuroSAT"),
    ),
)
