"""Seeded evaluation subsets, identified by the hash of their indices."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Subset:
    """Which images of a split are evaluated.

    Attributes:
        indices: sorted image indices into the split.
        n_total: size of the split.
        seed: seed that drew the subset (None for the full split).
        sha256: hash of ``indices`` as little-endian int64 (also set for the full split).
        selection: how the indices were chosen: ``all``, ``random`` (seeded, without replacement) or
            ``paper_subsample`` (every 20th batch of 256, as the official validation loop).
    """

    indices: np.ndarray
    n_total: int
    seed: int | None
    sha256: str
    selection: str = "all"

    @property
    def n(self) -> int:
        return len(self.indices)

    @property
    def is_full(self) -> bool:
        return self.n == self.n_total

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "n_total": self.n_total,
            "seed": self.seed,
            "indices_sha256": self.sha256,
            "selection": self.selection,
        }


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def select_subset(n_total: int, n: int | None, seed: int) -> Subset:
    """The full split when ``n`` is None or >= ``n_total``, else ``n`` indices drawn without replacement."""
    if n is None or n >= n_total:
        idx = np.arange(n_total, dtype=np.int64)
        return Subset(idx, n_total, None, indices_sha256(idx))
    idx = np.sort(np.random.default_rng(seed).permutation(n_total)[:n]).astype(np.int64)
    return Subset(idx, n_total, seed, indices_sha256(idx), "random")


def paper_subsample(n_total: int, every: int = 20, batch: int = 256) -> Subset:
    """The images the official PMG-AFT validation loop evaluated: batches 0, 20, 40, ... of 256, in split order.

    Its loop skips every batch whose index is not a multiple of 20 (a membership test meant to exempt CIFAR that
    never matches), so a split of 10,000 images keeps 512 of them: the paper's accuracies are multiples of 1/512.
    """
    starts = range(0, n_total, batch * every)
    idx = np.concatenate([np.arange(s, min(s + batch, n_total)) for s in starts]).astype(np.int64)
    return Subset(idx, n_total, None, indices_sha256(idx), "paper_subsample")
