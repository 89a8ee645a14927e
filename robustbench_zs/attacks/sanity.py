"""Sanity checks of an evaluation: hints of gradient masking and of results that contradict each other.

Each check is a pure function returning ``{"name", "passed", "value", "detail"}`` (plain Python types, ready for a
JSON record; a check with a tolerance adds it and its counts); ``check_all`` runs every check the given results
allow, and ``leaderboard_flags`` condenses failed checks into a short marker. A failed check does not prove a
bug: it says the numbers need a second look.

The checks and their rationale:

- ``zero_gradient_fraction``: AutoAttack's ``checks.py`` warns about points with an all-zero input gradient, since
  gradient-based attacks cannot move from them (a saturated cross-entropy at a large logit scale, or a
  non-differentiable component), so their robust accuracy overestimates robustness.
- ``robust_above_clean``: the clean image lies in every eps-ball, so under RobustBench's definition (correct on the
  clean image and under attack) no point can be robust without being clean-correct; one that is means misaligned
  masks or a verdict that skipped the clean prediction.
- ``autoattack_above_pgd``: AutoAttack starts with APGD-CE (a PGD with 100 iterations and an adaptive step) and only
  attacks the points that survive it further, so on the same images it must not leave more points robust than PGD
  at the same eps and norm; if it does, one of the two evaluations is broken.
- ``robust_rises_with_eps``: Carlini et al. (2019, "On Evaluating Adversarial Robustness", the checklist RobustBench
  and AutoAttack refer to) ask that a larger perturbation budget never lowers the attack's success rate.
- ``robust_rises_with_effort``: more attack steps, or more EOT samples for a randomized defense, must not raise
  robust accuracy (Carlini et al., 2019; Croce et al., ICML 2022).
- ``adaptive_above_non_adaptive``: a test-time defense's adaptive attack must break at least what the non-adaptive
  one (computed on the undefended model) breaks. This comparison and the one across EOT samples involve randomness
  (a randomized defense classifies the same image differently from draw to draw, and two attacks break different
  points), so they fail only when the excess is significant: a one-sided exact sign test (McNemar's) on the images
  only one of the two evaluations left robust, at ``RANDOM_ALPHA`` = 0.05.
- ``square_beats_gradient``: AutoAttack's flags (after Carlini et al., 2019) treat a black-box attack succeeding where
  the white-box ones failed as a hint that gradients are masked and robustness is overestimated; as its
  ``check_square_sr``, the check fails only when Square breaks more than 0.2% of the images (alpha = 0.002).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Threat, fmt255
from .core import attack_autocast, eval_mode_no_param_grad

__all__ = [
    "adaptive_above_non_adaptive",
    "autoattack_above_pgd",
    "record_checks",
    "robust_rises_with_effort",
    "zero_gradient_check",
    "zero_gradient_mask",
    "check_all",
    "leaderboard_flags",
    "robust_above_clean",
    "robust_rises_with_eps",
    "square_beats_gradient",
    "SQUARE_ALPHA",
    "RANDOM_ALPHA",
    "zero_gradient_fraction",
]


def _check(name: str, passed: bool, value: Any, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "value": value, "detail": detail}


def _mask(m: Any) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim != 1:
        raise ValueError(f"a per-example mask must be one-dimensional, got shape {a.shape}")
    return a.astype(bool)


def _aligned(
    a: Any, b: Any, a_indices: Any | None, b_indices: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Two masks restricted to their common image indices (or as given, when no indices are passed)."""
    a, b = _mask(a), _mask(b)
    if a_indices is None and b_indices is None:
        if len(a) != len(b):
            raise ValueError(f"masks of {len(a)} and {len(b)} examples without indices to align them")
        return a, b, None
    ia = np.asarray(a_indices if a_indices is not None else b_indices)
    ib = np.asarray(b_indices if b_indices is not None else a_indices)
    if len(ia) != len(a) or len(ib) != len(b):
        raise ValueError("every mask needs one index per example")
    common, pa, pb = np.intersect1d(ia, ib, assume_unique=False, return_indices=True)
    return a[pa], b[pb], common


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.1%})" if n else f"{k}/0"


def zero_gradient_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: is the input gradient of its cross-entropy exactly zero (or not finite)? A CPU bool tensor.

    The gradient is taken in fp32 (autocast off) on the per-sample summed loss, so each image's gradient is its own
    and does not depend on the batch; the model's train/eval mode and ``requires_grad`` flags are restored and no
    parameter gradient is accumulated. Non-finite gradients count as zero: no attack can follow them either.
    """
    with eval_mode_no_param_grad(model), torch.enable_grad(), attack_autocast(x.device, "fp32"):
        xb = x.detach().float().requires_grad_(True)
        loss = F.cross_entropy(model(xb).float(), y, reduction="sum")
        grad = None
        if loss.requires_grad:  # logits that do not depend on the input at all: the gradient is zero
            (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(xb)
        g = grad.detach().flatten(1)
        return ((g == 0).all(dim=1) | (~torch.isfinite(g)).any(dim=1)).cpu()


def zero_gradient_check(zero: Any) -> dict:
    """The ``zero_gradient_fraction`` check from a per-image mask (see ``zero_gradient_mask``); fails when above 0."""
    z = _mask(zero)
    k, n = int(z.sum()), len(z)
    detail = f"{_pct(k, n)} images have an all-zero (or non-finite) input gradient of the cross-entropy (fp32)"
    return _check("zero_gradient_fraction", k == 0, k / n if n else 0.0, detail)


def zero_gradient_fraction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int | None = None
) -> dict:
    """Fraction of images whose input gradient of the cross-entropy is exactly zero; fails when it is above 0.

    Args:
        model: maps images in [0, 1] (B, 3, H, W) to logits (B, C).
        x: images in [0, 1], on the model's device.
        y: labels (B,).
        batch_size: split the images into chunks of this size (all at once by default).
    """
    step = batch_size or max(len(x), 1)
    parts = [zero_gradient_mask(model, x[s : s + step], y[s : s + step]) for s in range(0, len(x), step)]
    return zero_gradient_check(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool))


def robust_above_clean(clean: Any, robust: Any, *, label: str = "") -> dict:
    """Count of examples robust under attack but misclassified clean (same images, same order); fails when > 0.

    Args:
        clean: per-example clean correctness.
        robust: per-example robustness under one attack.
        label: the threat, for the detail line.
    """
    c, r = _aligned(clean, robust, None, None)[:2]
    k = int((r & ~c).sum())
    n = len(c)
    acc = f"clean {c.mean():.2%}, robust {r.mean():.2%}" if n else "no examples"
    where = f"{label}: " if label else ""
    return _check("robust_above_clean", k == 0, k, f"{where}{k} of {n} examples robust but not clean-correct ({acc})")


def autoattack_above_pgd(
    aa_robust: Any,
    pgd_robust: Any,
    *,
    aa_indices: Any | None = None,
    pgd_indices: Any | None = None,
    label: str = "",
) -> dict:
    """How many more points AutoAttack leaves robust than PGD (same eps and norm); fails when that is above 0.

    The masks are compared on the image indices both were computed on (all of them when no indices are given). The
    value is AutoAttack's robust count minus PGD's on those images; the detail also counts the points each attack
    breaks that the other does not (a few PGD-only breaks are normal, a larger AutoAttack count is not).

    Args:
        aa_robust: per-example robustness under AutoAttack.
        pgd_robust: per-example robustness under PGD.
        aa_indices: the image indices of ``aa_robust`` (``pgd_indices`` when omitted).
        pgd_indices: the image indices of ``pgd_robust`` (``aa_indices`` when omitted).
        label: the threat (eps and norm), for the detail line.
    """
    aa, pgd, common = _aligned(aa_robust, pgd_robust, aa_indices, pgd_indices)
    n, a, p = len(aa), int(aa.sum()), int(pgd.sum())
    where = f"{label}: " if label else ""
    detail = (
        f"{where}on {n} common images AutoAttack leaves {a} robust, PGD {p} "
        f"(only PGD breaks {int((aa & ~pgd).sum())}, only AutoAttack breaks {int((pgd & ~aa).sum())})"
    )
    return _check("autoattack_above_pgd", a <= p, a - p, detail)


def robust_rises_with_eps(
    robust_by_eps: Mapping[float, Any], *, indices_by_eps: Mapping[float, Any] | None = None, label: str = ""
) -> dict:
    """Largest rise of robust accuracy from a smaller to a larger eps (one attack and norm); fails when above 0.

    Every pair of radii is compared on the images both were computed on, so there is no tolerance: the same images
    with a larger budget must not give a higher robust accuracy. Single examples may still flip (an attack with other
    step sizes can miss a point at the larger eps); the detail counts them, the check does not fail on them.

    Args:
        robust_by_eps: eps -> per-example robustness.
        indices_by_eps: eps -> image indices of that mask (the masks must be aligned when omitted).
        label: the attack and norm, for the detail line.
    """
    radii = sorted(robust_by_eps)
    worst, worst_pair, flips = 0.0, None, 0
    for i, lo in enumerate(radii):
        for hi in radii[i + 1 :]:
            if hi <= lo:
                continue
            ia = None if indices_by_eps is None else indices_by_eps[lo]
            ib = None if indices_by_eps is None else indices_by_eps[hi]
            a, b, _ = _aligned(robust_by_eps[lo], robust_by_eps[hi], ia, ib)
            if not len(a):
                continue
            flips += int((b & ~a).sum())
            rise = float(b.mean() - a.mean())
            if rise > worst or worst_pair is None:
                worst, worst_pair = max(rise, worst), (lo, hi, float(a.mean()), float(b.mean()), len(a))
    where = f"{label}: " if label else ""
    if worst_pair is None:
        return _check("robust_rises_with_eps", True, 0.0, f"{where}fewer than two radii on common images")
    lo, hi, acc_lo, acc_hi, n = worst_pair
    detail = (
        f"{where}robust accuracy {acc_lo:.2%} at eps {fmt255(lo)}/255 and {acc_hi:.2%} at {fmt255(hi)}/255 "
        f"on {n} common images; {flips} example(s) robust at a larger eps but not at a smaller one"
    )
    if worst <= 0:
        detail = f"{where}robust accuracy never rises with eps ({len(radii)} radii); {flips} single-example flip(s)"
    return _check("robust_rises_with_eps", worst <= 0, worst, detail)


#: the attack's effort knobs whose increase must not raise robust accuracy (``robust_rises_with_effort``)
EFFORT_KNOBS = {"steps": "attack steps", "eot_samples": "EOT samples"}

RANDOM_ALPHA = 0.05
"""Level of the one-sided exact sign test of the checks that compare random evaluations (EOT samples, adaptive
against non-adaptive): an excess of robust points fails only when its p-value is below this."""


def _sign_test(more: int, fewer: int) -> float:
    """One-sided exact sign test (McNemar's, exact): the probability of ``more`` or more of the ``more + fewer``
    discordant images falling on one side when either side is equally likely. 1.0 without discordant images."""
    n = more + fewer
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(more, n + 1)) / 2**n)


def _excess(a: np.ndarray, b: np.ndarray, alpha: float | None) -> tuple[bool, float, str]:
    """Does ``b`` keep more points robust than ``a`` (aligned masks) in a way that counts? Strict (any excess) when
    ``alpha`` is None, else the sign test on the discordant images. Returns (fails, p-value, words)."""
    up, down = int((b & ~a).sum()), int((a & ~b).sum())
    if alpha is None:
        return up > down, float("nan"), ""
    p = _sign_test(up, down)
    return (
        up > down and p < alpha,
        p,
        f"; {up} images robust only under the second, {down} only under the first, one-sided sign test p = {p:.3g} (fails below {alpha:g})",
    )


def robust_rises_with_effort(
    knob: str,
    robust_by_value: Mapping[int, Any],
    *,
    indices_by_value: Mapping[int, Any] | None = None,
    label: str = "",
    alpha: float | None | str = "auto",
) -> dict:
    """Largest rise of robust accuracy from less to more attack effort (``knob``: ``steps``, or ``eot_samples`` for a
    randomized defense's adaptive attack), everything else equal; fails when above 0 (for ``steps``) or, for
    ``eot_samples``, whose runs differ by chance, when the rise is significant (sign test at ``RANDOM_ALPHA``).

    An attack given more iterations, or a better estimate of the expected gradient, must not find fewer adversarial
    points (Carlini et al., 2019; Croce et al., ICML 2022, on randomized test-time defenses): a rise points at a
    masked gradient or at an attack that does not converge. Compared on the images both were computed on.

    Args:
        knob: a key of :data:`EFFORT_KNOBS`.
        robust_by_value: the knob's value -> per-example robustness.
        indices_by_value: value -> image indices of that mask (the masks must be aligned when omitted).
        label: the attack and radius, for the detail line.
        alpha: the sign test's level; None for the strict check; "auto": ``RANDOM_ALPHA`` for ``eot_samples``,
            strict for ``steps``.
    """
    if knob not in EFFORT_KNOBS:
        raise ValueError(f"unknown effort knob {knob!r}; one of {', '.join(EFFORT_KNOBS)}")
    if alpha == "auto":
        alpha = RANDOM_ALPHA if knob == "eot_samples" else None
    name, what = f"robust_rises_with_{knob}", EFFORT_KNOBS[knob]
    values = sorted(robust_by_value)
    worst, worst_pair, compared = 0.0, None, 0
    for i, lo in enumerate(values):
        for hi in values[i + 1 :]:
            ia = None if indices_by_value is None else indices_by_value[lo]
            ib = None if indices_by_value is None else indices_by_value[hi]
            a, b, _ = _aligned(robust_by_value[lo], robust_by_value[hi], ia, ib)
            if not len(a):
                continue
            compared += 1
            fails, _, words = _excess(a, b, alpha)
            rise = float(b.mean() - a.mean())
            if fails and (worst_pair is None or rise > worst):
                worst, worst_pair = rise, (lo, hi, float(a.mean()), float(b.mean()), len(a), words)
    where = f"{label}: " if label else ""
    if not compared:
        return _check(name, True, 0.0, f"{where}fewer than two values of {what} on common images")
    if worst_pair is None:
        how = "never rises" if alpha is None else "never rises significantly"
        return _check(name, True, 0.0, f"{where}robust accuracy {how} with {what} ({len(values)} values)")
    lo, hi, acc_lo, acc_hi, n, words = worst_pair
    detail = (
        f"{where}robust accuracy {acc_lo:.2%} with {lo} {what} and {acc_hi:.2%} with {hi}, on {n} common images"
        + words.replace("the second", f"{hi}").replace("the first", f"{lo}")
    )
    return _check(name, False, worst, detail)


def adaptive_above_non_adaptive(
    adaptive: Any,
    non_adaptive: Any,
    *,
    adaptive_indices: Any | None = None,
    non_adaptive_indices: Any | None = None,
    label: str = "",
    alpha: float | None = RANDOM_ALPHA,
) -> dict:
    """How many more points a test-time defense keeps robust under the adaptive attack than under the non-adaptive
    one (same attack, eps and images); fails when that excess is significant (one-sided exact sign test on the
    images only one of the two left robust, at ``alpha``; None: any excess fails). Two attacks break different
    points, and a randomized defense classifies an image differently from draw to draw, so a difference of an image
    or two is chance.

    The adaptive attack differentiates through the defense; the non-adaptive one only transfers from the undefended
    model. An adaptive attack that does worse than a transfer attack has not seen the defense's gradient (masked,
    or an EOT too small for its randomness), so its number is not a bound to trust.
    """
    a, na, _ = _aligned(adaptive, non_adaptive, adaptive_indices, non_adaptive_indices)
    n, ka, kn = len(a), int(a.sum()), int(na.sum())
    fails, _, words = _excess(na, a, alpha)
    where = f"{label}: " if label else ""
    detail = f"{where}on {n} common images the adaptive attack leaves {ka} robust, the non-adaptive one {kn}" + (
        words.replace("the second", "the adaptive attack").replace("the first", "the non-adaptive one")
    )
    return _check("adaptive_above_non_adaptive", not fails, ka - kn, detail)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


SQUARE_ALPHA = 0.002
"""Tolerance of ``square_beats_gradient``: AutoAttack's ``checks.check_square_sr`` (alpha = 0.002, 0.2 points)."""


def square_beats_gradient(components: Mapping[str, Any], *, label: str = "", alpha: float = SQUARE_ALPHA) -> dict:
    """Points that survive every gradient-based AutoAttack component but fall to Square; fails above ``alpha``.

    ``components`` maps component names (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``; case and punctuation do not
    matter, a ``clean`` entry is ignored) to per-example robust masks on the same images. Either form works: each
    component run alone, or AutoAttack's cascade (robust after that component, i.e. after it and every earlier one),
    because the count only looks at points every gradient component left robust.

    The check fails when those points are more than ``alpha`` of the images, as AutoAttack's ``check_square_sr``,
    which warns when Square's robust accuracy is below the best gradient attack's by more than alpha = 0.002: on the
    cascade the two are the same, since robust accuracy after Square is the accuracy after the last gradient
    component minus exactly these points. A handful of Square-only breaks on a large test set is normal; more hints
    at masked gradients.

    Args:
        components: component name -> per-example robustness.
        label: the threat, for the detail line.
        alpha: the largest fraction of the images Square may break after the gradient attacks without a flag.

    Returns:
        The check dict, with ``value`` the number of Square-only breaks, plus ``threshold`` (alpha), ``fraction``
        (of the images), ``n`` (images) and ``robust_to_gradient`` (points every gradient component left robust).
    """
    keys = {_key(k): k for k in components}
    square = [k for kk, k in keys.items() if "square" in kk]
    gradient = [k for kk, k in keys.items() if "square" not in kk and kk != "clean"]
    if not square or not gradient:
        raise ValueError(f"need a Square component and at least one gradient-based one, got {sorted(components)}")
    masks = {k: _mask(components[k]) for k in (*gradient, *square)}
    if len({len(m) for m in masks.values()}) != 1:
        raise ValueError("component masks must cover the same images")
    survived = np.logical_and.reduce([masks[k] for k in gradient])
    sq = np.logical_and.reduce([masks[k] for k in square])
    k = int((survived & ~sq).sum())
    n = len(sq)
    fraction = k / n if n else 0.0
    where = f"{label}: " if label else ""
    detail = (
        f"{where}{k} of {int(survived.sum())} points robust to {', '.join(gradient)} fall to {', '.join(square)} "
        f"({_pct(k, n)} of the images; flagged above {alpha:.1%})"
    )
    out = _check("square_beats_gradient", fraction <= alpha, k, detail)
    out.update(threshold=alpha, fraction=fraction, n=n, robust_to_gradient=int(survived.sum()))
    return out


def record_checks(
    clean: Any,
    robust: Any,
    above_clean: Any,
    zero_grad: Any | None,
    report: Mapping | None,
    *,
    label: str = "",
    precision: str = "fp32",
) -> list[dict]:
    """The checks one evaluation record can carry on its own (the cross-record ones run in the leaderboard).

    Args:
        clean: per-image clean correctness.
        robust: per-image robustness as recorded (correct on the clean image and under attack).
        above_clean: per image, the attack's own verdict "robust" where the clean pass says misclassified.
        zero_grad: per image, all-zero input gradient at the clean image (``zero_gradient_mask``), or None.
        report: AutoAttack's report (``masks``: component -> cascade mask), or None for other attacks.
        label: the threat, for the detail lines.
        precision: the attack's. An fp16 attack (the paper profile's) judges with its own float16 forward, which
            legitimately disagrees with the fp32 clean pass on near-tied images: its "robust but clean-misclassified"
            verdicts are then counted in an informational check (``fp16_verdict_vs_fp32_clean``, never a flag), and
            ``robust_above_clean`` checks the recorded mask alone.
    """
    out = []
    if zero_grad is not None:
        out.append(zero_gradient_check(zero_grad))
    if precision == "fp16":
        out.append(robust_above_clean(clean, _mask(robust), label=label))
        k = int(_mask(above_clean).sum())
        detail = (
            f"{label + ': ' if label else ''}{k} images the fp16 attack calls robust are misclassified by the fp32 "
            "clean pass (fp16 and fp32 forwards disagree on near ties); they count as not robust"
        )
        out.append(_check("fp16_verdict_vs_fp32_clean", True, k, detail))
    else:
        out.append(robust_above_clean(clean, _mask(robust) | _mask(above_clean), label=label))
    masks = (report or {}).get("masks") or {}
    if "square" in masks and any(k != "square" for k in masks):
        out.append(square_beats_gradient(masks, label=label))
    return out


def _results(results: Any) -> list:
    if results is None:
        return []
    if hasattr(results, "robust") and hasattr(results, "clean"):
        return [results]
    return list(results)


def _eps_key(eps: float) -> float:
    return round(eps * 255, 6)


def check_all(
    results: Any = (),
    *,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    components: Mapping[str, Any] | Mapping[Threat, Mapping[str, Any]] | None = None,
    autoattack_names: Collection[str] = ("autoattack",),
    pgd_names: Collection[str] = ("pgd",),
) -> list[dict]:
    """Every check that the given inputs allow, in the order of the module docstring.

    Args:
        results: one evaluation result or several (anything with ``indices``, ``clean`` and ``robust``
            (:class:`Threat` -> mask) like ``engine.EvalResult``); results on different subsets are compared on
            their common image indices.
        model, x, y: when all given, ``zero_gradient_fraction(model, x, y)`` runs on them.
        components: AutoAttack's per-component robust masks (name -> mask), or one such mapping per threat.
        autoattack_names: attack names that count as AutoAttack for the AutoAttack-vs-PGD check.
        pgd_names: attack names that count as PGD for it.

    Returns:
        A list of check dicts; checks whose inputs are missing are left out. ``robust_rises_with_eps`` runs per
        attack name, norm, steps, precision and random start (and per step size when one eps appears twice).
    """
    out: list[dict] = []
    if model is not None and x is not None and y is not None:
        out.append(zero_gradient_fraction(model, x, y))

    entries: dict[Threat, tuple[np.ndarray | None, np.ndarray]] = {}
    for r in _results(results):
        idx = None if getattr(r, "indices", None) is None else np.asarray(r.indices)
        for t, mask in r.robust.items():
            if t.is_clean:
                continue
            out.append(robust_above_clean(r.clean, mask, label=t.label))
            entries.setdefault(t, (idx, _mask(mask)))

    aa = [t for t in entries if t.name in autoattack_names]
    pgd = [t for t in entries if t.name in pgd_names]
    for ta in aa:
        for tp in pgd:
            if ta.norm == tp.norm and _eps_key(ta.eps) == _eps_key(tp.eps):
                (ia, ma), (ip, mp) = entries[ta], entries[tp]
                out.append(
                    autoattack_above_pgd(ma, mp, aa_indices=ia, pgd_indices=ip, label=f"{ta.label} vs {tp.label}")
                )

    groups: dict[tuple, list[Threat]] = {}
    for t in entries:
        groups.setdefault((t.name, t.norm, t.steps, t.precision, t.random_start), []).append(t)
    for threats in groups.values():
        eps = [_eps_key(t.eps) for t in threats]
        subgroups = [threats] if len(set(eps)) == len(eps) else _by_step_size(threats)
        for sub in subgroups:
            if len({_eps_key(t.eps) for t in sub}) < 2:
                continue
            t0 = sub[0]
            label = f"{t0.name.upper()}-{t0.steps} {t0.norm}" + ("" if t0.precision == "fp32" else f" {t0.precision}")
            out.append(
                robust_rises_with_eps(
                    {t.eps: entries[t][1] for t in sub},
                    indices_by_eps=None
                    if any(entries[t][0] is None for t in sub)
                    else {t.eps: entries[t][0] for t in sub},
                    label=label,
                )
            )

    for label, comps in _component_sets(components):
        out.append(square_beats_gradient(comps, label=label))
    return out


def _by_step_size(threats: Sequence[Threat]) -> list[list[Threat]]:
    by: dict[float, list[Threat]] = {}
    for t in threats:
        by.setdefault(_eps_key(t.step_size), []).append(t)
    return list(by.values())


def _component_sets(components: Mapping | None) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if not components:
        return []
    if all(isinstance(k, Threat) for k in components):
        return [(t.label, c) for t, c in components.items()]
    return [("", components)]


_TAGS = {
    "zero_gradient_fraction": "zero-grad",
    "robust_above_clean": "robust>clean",
    "autoattack_above_pgd": "AA>PGD",
    "robust_rises_with_eps": "robust↑ε",
    "square_beats_gradient": "Square>grad",
    "robust_rises_with_steps": "robust↑steps",
    "robust_rises_with_eot_samples": "robust↑EOT",
    "adaptive_above_non_adaptive": "adaptive>non-adaptive",
}


def leaderboard_flags(checks: Iterable[dict]) -> str:
    """A short marker for the leaderboard: ``""`` when every check passed, else e.g. ``"⚠ zero-grad 12%; AA>PGD"``.

    A check that failed several times (one per threat) appears once, with its largest value where that is shown
    (the zero-gradient fraction and the number of points Square breaks).
    """
    worst: dict[str, Any] = {}
    for c in checks:
        if c.get("passed", True):
            continue
        name, value = c["name"], c.get("value")
        if name not in worst:
            worst[name] = value
        elif isinstance(value, int | float) and isinstance(worst[name], int | float):
            worst[name] = max(worst[name], value)
    if not worst:
        return ""
    parts = []
    for name, value in worst.items():
        tag = _TAGS.get(name, name)
        if name == "zero_gradient_fraction" and isinstance(value, float) and math.isfinite(value):
            tag += f" {value:.0%}" if value >= 0.01 else f" {value:.1%}"
        elif name == "square_beats_gradient" and isinstance(value, int):
            tag += f" {value}"
        parts.append(tag)
    return "⚠ " + "; ".join(parts)
