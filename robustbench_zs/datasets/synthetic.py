"""A generated 10-class dataset for tests and the smoke preset: no files, deterministic, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from .spec import DATASETS, GENERIC_TEMPLATE, DatasetSpec, TensorImageDataset

CLASSNAMES = ("apple", "bicycle", "cloud", "dolphin", "engine", "forest", "guitar", "house", "island", "jacket")
SIZES = {"test": 512, "train": 2048}


def make_synthetic(
    n: int, num_classes: int = 10, size: int = 32, seed: int = 0, noise: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, size, size) uint8 and balanced labels: a smooth per-class pattern plus per-image noise.

    The class patterns depend only on ``num_classes`` and ``size``, so splits drawn with different seeds share them.
    """
    proto_rng = np.random.default_rng(1234 + num_classes)
    coarse = proto_rng.uniform(0.15, 0.85, size=(num_classes, 3, 4, 4))
    reps = -(-size // 4)
    protos = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :size, :size]
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    x = protos[labels] + noise * rng.standard_normal((n, 3, size, size))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def load_synthetic(data_root: Path | None, split: str) -> TensorImageDataset:
    if split not in SIZES:
        raise ZSBenchError(f"Synthetic has no split {split!r}; splits: {', '.join(SIZES)}")
    images, labels = make_synthetic(SIZES[split], len(CLASSNAMES), seed={"test": 1, "train": 2}[split])
    return TensorImageDataset(images, labels, list(CLASSNAMES), root=None)


DATASETS.add(
    "synthetic",
    DatasetSpec(
        id="synthetic",
        name="Synthetic",
        num_classes=len(CLASSNAMES),
        splits=("test", "train"),
        eval_split="test",
        templates=(GENERIC_TEMPLATE,),
        classnames=CLASSNAMES,
        layout="(generated in memory; no files)",
        source="generated",
        loader=load_synthetic,
        needs_root=False,
        native_size=(32, 32),
        paper_preprocess="native",
        ensemble_templates="cifar10",
    ),
)
