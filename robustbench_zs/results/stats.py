"""Statistics for accuracies: Wilson intervals, paired tests, bootstrap intervals, compact per-example storage.

Records keep which images were classified correctly (not only how many), so two methods measured on the same images
can be compared image by image (McNemar's test) and averages over datasets get intervals that account for every
dataset's sampling error (bootstrap).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson, JASA 1927). (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # the bounds are exactly 0 at k = 0 and exactly 1 at k = n; avoid rounding just inside them
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def pack_bools(mask: np.ndarray) -> str:
    """Bool array -> base64 of its little-endian bit packing (8 examples per byte)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool), bitorder="little").tobytes()).decode("ascii")


def unpack_bools(data: str, n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


#: Below this many discordant pairs McNemar's exact binomial test is reported, from it on the chi-square test.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two classifiers on the same images.

    Attributes:
        n: images compared.
        b: images that A classifies correctly and B does not.
        c: images that B classifies correctly and A does not.
        p_exact: exact two-sided binomial p-value, ``min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Bin(b + c, 1/2)``.
        chi2: chi-square statistic with Edwards' continuity correction, ``(|b - c| - 1)^2 / (b + c)``
            (0 when ``b + c == 0``).
        p_chi2: its p-value under a chi-square distribution with one degree of freedom.
        test: ``"exact"`` or ``"chi2"``, the one whose p-value is reported (see :func:`mcnemar`).
    """

    n: int
    b: int
    c: int
    p_exact: float
    chi2: float
    p_chi2: float
    test: str

    @property
    def p_value(self) -> float:
        """The p-value of the reported test."""
        return self.p_exact if self.test == "exact" else self.p_chi2


def _binom_half_cdf(k: int, m: int) -> float:
    """``P(X <= k)`` for ``X ~ Bin(m, 1/2)``: exact integer arithmetic up to m = 5000, log-space sums beyond."""
    if k >= m:
        return 1.0
    if m <= 5000:
        term, total = 1, 1  # C(m, 0)
        for i in range(k):
            term = term * (m - i) // (i + 1)
            total += term
        return total / 2**m  # int / int rounds correctly even where 2**m exceeds the float range
    i = np.arange(k + 1, dtype=np.float64)
    log_terms = math.lgamma(m + 1) - np.array([math.lgamma(x + 1) + math.lgamma(m - x + 1) for x in i])
    top = log_terms.max()
    return float(math.exp(top + math.log(np.exp(log_terms - top).sum()) - m * math.log(2)))


def mcnemar(a: np.ndarray, b: np.ndarray) -> McNemarResult:
    """McNemar's test of whether two classifiers have the same accuracy, from their paired per-image correctness.

    Only the discordant images carry information: ``b`` (A right, B wrong) and ``c`` (A wrong, B right). Under the
    null hypothesis each discordant image is equally likely to fall either way, so ``b ~ Bin(b + c, 1/2)``. Both the
    exact binomial test and the continuity-corrected chi-square approximation are computed; the reported one
    (``test``) is the exact test when ``b + c < 25`` (where the approximation is poor) and the chi-square test from
    25 discordant pairs on. With no discordant pairs both p-values are 1.

    Args:
        a: per-image correctness of classifier A (bool, one entry per image).
        b: per-image correctness of classifier B on the same images, in the same order.

    Returns:
        A :class:`McNemarResult`.
    """
    a = np.asarray(a, dtype=bool)
    b_mask = np.asarray(b, dtype=bool)
    if a.shape != b_mask.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D masks of the same length, got shapes {a.shape} and {b_mask.shape}")
    n_b = int(np.count_nonzero(a & ~b_mask))
    n_c = int(np.count_nonzero(~a & b_mask))
    m = n_b + n_c
    if m == 0:
        p_exact, chi2, p_chi2 = 1.0, 0.0, 1.0
    else:
        p_exact = min(1.0, 2.0 * _binom_half_cdf(min(n_b, n_c), m))
        chi2 = max(abs(n_b - n_c) - 1, 0) ** 2 / m
        p_chi2 = math.erfc(math.sqrt(chi2 / 2))  # survival function of chi-square with 1 degree of freedom
    test = "exact" if m < MCNEMAR_EXACT_BELOW else "chi2"
    return McNemarResult(int(a.size), n_b, n_c, p_exact, chi2, p_chi2, test)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; monotone in the sorted order, capped at 1).

    Rejecting every hypothesis whose adjusted p-value is at most ``alpha`` keeps the family-wise error rate (the
    chance of any false rejection among all the tests) at ``alpha``, without assuming the tests are independent.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(scaled)
    return out


class MeanCI(NamedTuple):
    """A mean accuracy (fraction) with the bounds of its interval."""

    mean: float
    low: float
    high: float


def bootstrap_mean_ci(
    masks: Sequence[np.ndarray] | Mapping[str, np.ndarray], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> MeanCI:
    """The mean over datasets of per-dataset accuracy, with a percentile bootstrap interval.

    Each bootstrap replicate resamples the images of every dataset independently, with replacement and at the
    dataset's own size, then averages the per-dataset accuracies with equal weight (as the leaderboard's *Average*
    column does). With one dataset the mean is that dataset's accuracy, and its interval is that accuracy's Wilson
    interval (the one its own cell shows), not a bootstrap that would differ from it. The number of correct images in a resample of ``n`` images from a set with ``k`` correct ones is
    distributed ``Bin(n, k/n)``, so each replicate draws that count directly: the same distribution as drawing image
    indices, in O(datasets x n_boot) time and memory whatever the number of images.

    Args:
        masks: per-image correctness, one bool array per dataset (a sequence, or a mapping from dataset id).
        n_boot: bootstrap replicates.
        seed: seed of the replicates; the same inputs and seed give the same interval.
        level: coverage of the two-sided interval, in (0, 1).

    Returns:
        :class:`MeanCI` of fractions in [0, 1]: the observed mean and the interval's bounds.
    """
    arrays = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    if not arrays:
        raise ValueError("need at least one dataset's mask")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    n = np.array([np.asarray(m).size for m in arrays], dtype=np.int64)
    if (n == 0).any():
        raise ValueError("a dataset's mask is empty")
    k = np.array([np.count_nonzero(np.asarray(m, dtype=bool)) for m in arrays], dtype=np.int64)
    if n.size == 1:  # the mean of one accuracy is that accuracy: give its own (Wilson) interval, as its cell does
        z = Z95 if level == 0.95 else NormalDist().inv_cdf(0.5 + level / 2)
        low, high = wilson_interval(int(k[0]), int(n[0]), z)
        return MeanCI(float(k[0] / n[0]), low, high)
    rng = np.random.default_rng(seed)
    counts = rng.binomial(n[:, None], (k / n)[:, None], size=(n.size, n_boot))  # (datasets, replicates)
    means = (counts / n[:, None]).mean(axis=0)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return MeanCI(float((k / n).mean()), float(low), float(high))
