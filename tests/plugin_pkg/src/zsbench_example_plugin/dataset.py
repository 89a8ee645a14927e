"""``stripes``: 32x32 images of stripes in four orientations, generated in memory (no files, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustbench_zs.datasets import DatasetSpec, TensorImageDataset
from robustbench_zs.errors import ZSBenchError

CLASSNAMES = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard")
SIZES = {"test": 96, "train": 192}


def make_stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, 32, 32) uint8 with balanced labels; a random phase, colour pair and noise per image."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSNAMES)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        phase = rng.integers(0, 8)
        wave = [(yy + phase) // 4, (xx + phase) // 4, (xx + yy + phase) // 4, (xx // 4 + yy // 4 + phase)][label] % 2
        a, b = rng.uniform(0.1, 0.9, size=(2, 3))
        img = np.where(wave[None] == 1, a[:, None, None], b[:, None, None])
        img = img + 0.05 * rng.standard_normal(img.shape)
        images[i] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return images, labels.astype(np.int64)


def load_stripes(data_root: Path | None, split: str) -> TensorImageDataset:
    if split not in SIZES:
        raise ZSBenchError(f"Stripes has no split {split!r}; splits: {', '.join(SIZES)}")
    images, labels = make_stripes(SIZES[split], seed={"test": 11, "train": 12}[split])
    return TensorImageDataset(images, labels, list(CLASSNAMES), root=None)


#: the entry point names this object; its ``id`` is replaced by the entry point's name
STRIPES = DatasetSpec(
    id="stripes",
    name="Stripes",
    num_classes=len(CLASSNAMES),
    splits=("test", "train"),
    eval_split="test",
    templates=("a photo of {}.",),
    classnames=CLASSNAMES,
    layout="(generated in memory; no files)",
    source="zsbench-example-plugin",
    loader=load_stripes,
    needs_root=False,
    native_size=(32, 32),
    paper_preprocess="native",
)
