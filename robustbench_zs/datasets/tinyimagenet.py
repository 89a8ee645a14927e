"""TinyImageNet in its stock ``tiny-imagenet-200`` layout, read as distributed (no folder reorganisation)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ZSBenchError
from ..paths import contained
from .files import IMAGE_SUFFIXES, FileImageDataset, missing, no_split, read_text, require_present
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, load_metadata

FOLDER = "tiny-imagenet-200"
NUM_CLASSES = 200


def imagenet_curated(wnids: list[str]) -> list[str]:
    """CLIP_benchmark's curated ImageNet-1k names of ``wnids`` (ImageNet's class index = position in sorted wnids)."""
    order = {w: i for i, w in enumerate(sorted(load_metadata("imagenet_wnid_to_name")["names"]))}
    curated = load_metadata("clip_benchmark_en")["classnames"]["imagenet1k"]
    return [curated[order[w]] for w in wnids]


def load_tinyimagenet(data_root: Path, split: str) -> FileImageDataset:
    spec = DATASETS.get("tinyimagenet")
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise missing(spec, base, f"no folder {FOLDER}")
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise missing(spec, base, "no wnids.txt")
    wnids = sorted({w.strip() for w in read_text(wnids_file).split() if w.strip()})
    if len(wnids) != NUM_CLASSES:
        raise missing(spec, base, f"wnids.txt lists {len(wnids)} classes, expected {NUM_CLASSES}")
    table = load_metadata("imagenet_wnid_to_name")["names"]
    unknown = [w for w in wnids if w not in table]
    if unknown:
        raise ZSBenchError(f"{wnids_file}: wnids not in the ImageNet name table: {', '.join(unknown[:5])}")
    index = {w: i for i, w in enumerate(wnids)}
    samples: list[tuple[Path, int]] = []
    if split == "val":
        ann = base / "val" / "val_annotations.txt"
        img_dir = base / "val" / "images"
        if not ann.is_file() or not img_dir.is_dir():
            raise missing(spec, base, "no val/images or val/val_annotations.txt")
        for lineno, line in enumerate(read_text(ann).splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise ZSBenchError(f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt")
            samples.append((contained(img_dir, parts[0], f"{ann}:{lineno}"), index[parts[1]]))
        require_present(spec, base, samples, "val_annotations.txt")
    elif split == "train":
        for w in wnids:
            d = base / "train" / w / "images"
            if not d.is_dir():
                raise missing(spec, base, f"no train/{w}/images")
            samples.extend((p, index[w]) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise no_split(spec, split)
    if not samples:
        raise missing(spec, base, f"no images in the {split} split")
    data = FileImageDataset(samples, [table[w] for w in wnids], root=base)
    data.wnids = wnids
    return data


DATASETS.add(
    "tinyimagenet",
    DatasetSpec(
        id="tinyimagenet",
        name="TinyImageNet",
        num_classes=NUM_CLASSES,
        splits=("val", "train"),
        eval_split="val",
        templates=(GENERIC_TEMPLATE,),
        folder=FOLDER,
        classnames=None,  # from wnids.txt through the ImageNet wnid -> name table
        layout=(
            "<data-root>/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
            "val/val_annotations.txt} (the stock zip, unpacked as is)"
        ),
        source="http://cs231n.stanford.edu/tiny-imagenet-200.zip (unzip into the data root)",
        loader=load_tinyimagenet,
        native_size=(64, 64),
        ensemble_templates="imagenet1k",
        ensemble_names=lambda data: imagenet_curated(list(data.wnids)),
        manual_steps=(
            "cd <data-root> && wget http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip -q tiny-imagenet-200.zip "
            "(leaves <data-root>/tiny-imagenet-200 as distributed; no reorganisation needed)"
        ),
    ),
)
