"""Seeded evaluation subsets, identified by the hash of their indices.

The paper subsample (:func:`paper_subsample_of`) keeps the images the official PMG-AFT validation loop evaluated:
batches 0, 20, 40, ... of 256 in the order the official code's data loader yields them (DataLoader, shuffle=False).
That order is our loader's order for every dataset except the two the official code reads with torchvision's
``ImageFolder`` over class folders (ImageNet and TinyImageNet val, see :data:`OFFICIAL_ORDER`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DatasetSpec, ImageDataset


@dataclass(frozen=True)
class Subset:
    """Which images of a split are evaluated.

    Attributes:
        indices: sorted image indices into the split.
        n_total: size of the split.
        seed: seed that drew the subset (None for the full split).
        sha256: hash of ``indices`` as little-endian int64 (also set for the full split).
        selection: how the indices were chosen: ``all``, ``random`` (seeded, without replacement),
            ``paper_subsample`` (every 20th batch of 256, as the official validation loop) or ``fast_tier`` (a shipped
            index file).
        order: for ``paper_subsample``, the image order the batches were counted in: ``split`` (our loader's order,
            :func:`paper_subsample`) or the official loader's order rule (:func:`paper_subsample_of`). Recorded by
            :meth:`to_dict` as ``paper_order`` for paper subsamples only.
        file, file_sha256, rule: for a subset read from a shipped index file (``selection`` ``fast_tier``,
            :mod:`robustbench_zs.datasets.tiers`): the file, the sha256 of its bytes and the rule that drew it, recorded
            by :meth:`to_dict` as ``subset_file``, ``subset_file_sha256`` and ``subset_rule``.
    """

    indices: np.ndarray
    n_total: int
    seed: int | None
    sha256: str
    selection: str = "all"
    order: str = "split"
    file: str | None = None
    file_sha256: str | None = None
    rule: str | None = None

    @property
    def n(self) -> int:
        return len(self.indices)

    @property
    def is_full(self) -> bool:
        return self.n == self.n_total

    def to_dict(self) -> dict:
        out = {
            "n": self.n,
            "n_total": self.n_total,
            "seed": self.seed,
            "indices_sha256": self.sha256,
            "selection": self.selection,
        }
        if self.selection == "paper_subsample":
            out["paper_order"] = self.order
        if self.file is not None:
            out.update(subset_file=self.file, subset_file_sha256=self.file_sha256, subset_rule=self.rule)
        return out


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def select_subset(n_total: int, n: int | None, seed: int) -> Subset:
    """The full split when ``n`` is None or >= ``n_total``, else ``n`` indices drawn without replacement."""
    if n is None or n >= n_total:
        idx = np.arange(n_total, dtype=np.int64)
        return Subset(idx, n_total, None, indices_sha256(idx))
    idx = np.sort(np.random.default_rng(seed).permutation(n_total)[:n]).astype(np.int64)
    return Subset(idx, n_total, seed, indices_sha256(idx), "random")


def paper_positions(n_total: int, every: int = 20, batch: int = 256) -> np.ndarray:
    """Positions (in loader order) of batches 0, ``every``, 2 * ``every``, ... of ``batch`` images, ascending."""
    if every < 1 or batch < 1:
        raise ValueError(f"every and batch must be positive, got every={every}, batch={batch}")
    starts = range(0, n_total, batch * every)
    if not starts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(s, min(s + batch, n_total)) for s in starts]).astype(np.int64)


def paper_subsample(n_total: int, every: int = 20, batch: int = 256) -> Subset:
    """Order-agnostic helper: batches 0, 20, 40, ... of 256 counted in OUR split order (``order="split"``).

    Its loop skips every batch whose index is not a multiple of 20 (a membership test meant to exempt CIFAR that
    never matches), so a split of 10,000 images keeps 512 of them: the paper's accuracies are multiples of 1/512.
    These are the official loop's images only where the official loader yields the split in our order; use
    :func:`paper_subsample_of`, which counts the batches in the official loader's order.
    """
    idx = paper_positions(n_total, every, batch)
    return Subset(idx, n_total, None, indices_sha256(idx), "paper_subsample")


# --- the official loaders' image order ---------------------------------------------------------------------------

#: ``Subset.order`` of datasets whose official loader yields the split in our loader's order.
LOADER_ORDER = "loader"
#: ``Subset.order`` of the splits the official code reads with torchvision's ImageFolder.
IMAGEFOLDER_ORDER = "imagefolder: class folders sorted, files sorted"


def imagefolder_order(data: ImageDataset) -> np.ndarray:
    """Our indices in the order torchvision's ``ImageFolder`` yields the split once it is laid out as
    ``<wnid>/<file name>`` class folders: sorted by (wnid, file name), plain string order (``val_10`` < ``val_2``).

    That is ``find_classes`` (class folders sorted by name) and ``make_dataset`` (``sorted(os.walk(class dir))``, then
    ``sorted(fnames)``). The wnid of image ``i`` is ``data.wnids[label]`` (TinyImageNet: its val_annotations.txt wnid;
    ImageNet: its class folder, or its devkit wnid in the flat layout); the file name is the name of its path, which
    reorganising val into class folders keeps. Needs ``data.samples`` (path, label) and ``data.wnids``.
    """
    samples = getattr(data, "samples", None)
    wnids = getattr(data, "wnids", None)
    if samples is None or wnids is None:
        raise TypeError(f"{type(data).__name__} has no samples/wnids: cannot derive the ImageFolder order")
    keys = [(wnids[label], Path(path).name) for path, label in samples]
    return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


@dataclass(frozen=True)
class OfficialOrder:
    """How the official code's loader orders a dataset's evaluated split.

    Attributes:
        rule: recorded as ``Subset.order`` (``paper_order`` in records).
        order: ``order(data) -> perm``, ``perm[k]`` = our index of the k-th image the official loader yields; None
            when that is our loader's order (the identity).
    """

    rule: str
    order: Callable[[ImageDataset], np.ndarray] | None = None


#: dataset id -> the official loader's order, where it is not simply our loader's order. Datasets absent here
#: (cifar10, cifar100, stl10, food101, oxfordpets, flowers102, dtd, eurosat, fgvc_aircraft, caltech101, caltech256,
#: stanfordcars, pcam, and generated data) are read in the official loader's order: ``LOADER_ORDER``.
OFFICIAL_ORDER: dict[str, OfficialOrder] = {
    # PMG_AFT.py: torchvision.datasets.ImageFolder(os.path.join(tinyimagenet_root, 'val')) over val/<wnid>/ folders;
    # ours lists val/val_annotations.txt (val_0, val_1, ...)
    "tinyimagenet": OfficialOrder(IMAGEFOLDER_ORDER, imagefolder_order),
    # PMG_AFT.py: torchvision.datasets.ImageFolder(os.path.join(imgnet_full, 'val')); ours is sorted by file name
    "imagenet": OfficialOrder(IMAGEFOLDER_ORDER, imagefolder_order),
    # the official SUN397 lists list(Path.rglob("sun_*.jpg")): directory-entry (filesystem) order, which no file
    # name or metadata determines, so the subsample cannot follow it; ours: ClassName.txt order, files sorted
    "sun397": OfficialOrder("loader (official: Path.rglob filesystem order, not reproducible)"),
}


def official_rule(spec: DatasetSpec | str) -> OfficialOrder:
    """The :class:`OfficialOrder` of a dataset (spec or id); ``LOADER_ORDER`` (identity) when not in the table."""
    ds_id = spec if isinstance(spec, str) else spec.id
    return OFFICIAL_ORDER.get(ds_id, OfficialOrder(LOADER_ORDER))


def official_order(spec: DatasetSpec | str, data: ImageDataset) -> np.ndarray:
    """Permutation ``perm`` of ``range(len(data))``: ``perm[k]`` is our index of the k-th image the official code's
    loader yields for this split (the identity where both orders agree)."""
    rule = official_rule(spec)
    n = len(data)
    if rule.order is None:
        return np.arange(n, dtype=np.int64)
    perm = np.asarray(rule.order(data), dtype=np.int64)
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        ds_id = spec if isinstance(spec, str) else spec.id
        raise ValueError(f"{ds_id}: the official order is not a permutation of the split's {n} images")
    return perm


def paper_subsample_of(spec: DatasetSpec | str, data: ImageDataset, every: int = 20, batch: int = 256) -> Subset:
    """The images the official PMG-AFT validation loop evaluated: batches 0, ``every``, 2 * ``every``, ... of
    ``batch`` images in the official loader's order (:func:`official_order`), as sorted indices into ``data``.

    ``Subset.order`` records the order rule (``paper_order`` in :meth:`Subset.to_dict`).
    """
    rule = official_rule(spec)
    n = len(data)
    idx = np.sort(official_order(spec, data)[paper_positions(n, every, batch)]).astype(np.int64)
    return Subset(idx, n, None, indices_sha256(idx), "paper_subsample", rule.rule)
