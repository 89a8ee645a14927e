"""TinyImageNet in its stock ``tiny-imagenet-200`` layout, read as distributed (no folder reorganisation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetNotFoundError, ZSBenchError
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, ImageDataset, load_metadata

FOLDER = "tiny-imagenet-200"
NUM_CLASSES = 200


def decode_image(path: Path) -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor; a broken file is reported with its path."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ZSBenchError(f"cannot decode image {path}: {e}; re-download or delete the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class FileImageDataset(ImageDataset):
    """Images listed as (path, label), decoded on access."""

    def __init__(self, samples: list[tuple[Path, int]], classnames: list[str], root: Path) -> None:
        self.samples = samples
        self.classnames = classnames
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return decode_image(path), label

    def fingerprint(self) -> str:
        """sha256 of every (file name, size in bytes, label): cheap, and it changes when a file is replaced."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256()
            for path, label in self.samples:
                h.update(f"{path.relative_to(self.root)}|{path.stat().st_size}|{label}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _missing(spec: DatasetSpec, base: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{spec.name} not found or incomplete: {what} (under {base}); expected layout: {spec.layout}; get it from {spec.source}"
    )


def load_tinyimagenet(data_root: Path, split: str) -> FileImageDataset:
    spec = DATASETS.get("tinyimagenet")
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise _missing(spec, base, f"no folder {FOLDER}")
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise _missing(spec, base, "no wnids.txt")
    wnids = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    if len(wnids) != NUM_CLASSES:
        raise _missing(spec, base, f"wnids.txt lists {len(wnids)} classes, expected {NUM_CLASSES}")
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
            raise _missing(spec, base, "no val/images or val/val_annotations.txt")
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise ZSBenchError(f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt")
            samples.append((img_dir / parts[0], index[parts[1]]))
        absent = [p for p, _ in samples if not p.is_file()]
        if absent:
            raise _missing(
                spec, base, f"{len(absent)} images listed in val_annotations.txt are missing, e.g. {absent[0]}"
            )
    elif split == "train":
        for w in wnids:
            d = base / "train" / w / "images"
            if not d.is_dir():
                raise _missing(spec, base, f"no train/{w}/images")
            samples.extend((p, index[w]) for p in sorted(d.iterdir()) if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    else:
        raise ZSBenchError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")
    if not samples:
        raise _missing(spec, base, f"no images in the {split} split")
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
    ),
)
