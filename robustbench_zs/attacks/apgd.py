"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE and targeted APGD-DLR, L-inf and L2, with per-image random starts.

The algorithm and its constants follow the official AutoAttack code (fra31/auto-attack, ``autopgd_base.py``):
the step size starts at 2 * eps; a heavy-ball step with momentum 0.75 (none at the first step); checkpoints after
22% of the iterations, then ever shorter intervals (3% less each time, at least 6%); at a checkpoint the step size of
an image is halved and it restarts from its best point when the loss grew in at most rho = 0.75 of the steps since
the last checkpoint, or when its step size was not halved at the last checkpoint and its best loss has not improved;
the targeted DLR loss aims at the 2nd, 3rd, ... most likely class of the clean image; restarts and target classes
run only on the points still robust. A point is robust when the model classifies it correctly at the start and at
every iterate, as in the official ``acc`` bookkeeping.

What differs from the official code, by design: the random start of each image comes from its own generator
(seeded from the image's seed, the component, the target class and the restart), so results do not depend on the
batch size or on which other images are still robust; the official code draws the starts of the whole batch from
one global generator. Gradients are taken in fp32 with autocast off, on the per-image loss summed over the batch
(as in the official code). The global torch random state is not touched.

``Threat.precision == "bf16"`` (APGD-CE only, as ``pgd``): the forwards run under bfloat16 autocast, the loss is
computed in fp32 from the logits and summed, and the verdict is taken by fp32 forwards of the last iterate and of the
point (start or iterate) of lowest bf16 margin, not by the bf16 predictions. APGD-T stays fp32 (``PRECISIONS_T``).
``APGDCE.perturb`` and ``APGDT.perturb`` return, per image, the first point the model misclassifies (the clean image
where it is misclassified already), else the last iterate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZSBenchError
from .base import ATTACKS, Attack, AttackEntry, Threat, require_precision
from .core import (
    LowestMargin,
    attack_autocast,
    check_iterate,
    clean_logits,
    eval_mode_no_param_grad,
    unit_noise,
    verdict_precision,
)

DEFAULT_ITERATIONS = 100
RHO = 0.75
MOMENTUM = 0.75
N_TARGET_CLASSES = 9
MIN_CLASSES_TARGETED_DLR = 4
"""The targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2 of the sorted logits: it needs 4 classes."""
PRECISIONS_CE = ("fp32", "bf16")
PRECISIONS_T = ("fp32",)
"""APGD-T stays fp32: at logit scale 100 the logits lie near 100, where bf16 values are 0.5 apart, so top logits tie
(a third of the tiny test classifier's images) and the targeted DLR loss, a ratio of logit differences, degenerates;
bf16 APGD-T left 24 points more robust accuracy than fp32 there (APGD-CE: 1 point, within the bf16 test tolerance)."""

_STREAM_APGD_CE = 1
_STREAM_APGD_T = 2


def stream_seeds(seeds: torch.Tensor, stream: int) -> torch.Tensor:
    """Per-image seeds of one random stream (a component, target class and restart), derived from the image seeds."""
    mixed = [(int(s) * 6364136223846793005 + (stream + 1) * 1442695040888963407) % (1 << 62) for s in seeds.tolist()]
    return torch.tensor(mixed, dtype=torch.long)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _normalize(v: torch.Tensor, norm: str) -> torch.Tensor:
    """v / ||v|| per image (L-inf: the max-abs coordinate; L2: the Euclidean length), with the official 1e-12."""
    flat = v.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    return v / (_bcast(size, v) + 1e-12)


def _project(z: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The point ``z`` into the eps-ball around x, then into the [0, 1] box, with the official code's arithmetic (not
    ``core.project``: its rounding differs, and APGD keeps the official one)."""
    if norm == "linf":
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0.0, 1.0)
    d = z - x
    size = _bcast(d.flatten(1).norm(dim=1), d)
    return (x + d / (size + 1e-12) * torch.clamp(size, max=eps)).clamp(0.0, 1.0)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """Per-image targeted DLR loss -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12); needs at least 4 classes."""
    if logits.shape[1] < MIN_CLASSES_TARGETED_DLR:
        raise ZSBenchError(
            f"the targeted DLR loss needs at least {MIN_CLASSES_TARGETED_DLR} classes; the model has {logits.shape[1]}"
        )
    z = logits.sort(dim=1).values
    u = torch.arange(len(y), device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def apgd_single(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int,
    start: torch.Tensor,
    y_target: torch.Tensor | None = None,
    rho: float = RHO,
    eot_iter: int = 1,
    precision: str = "fp32",
    adv: torch.Tensor | None = None,
) -> torch.Tensor:
    """One APGD run (one restart, one target) on a batch; returns robust[i] = correct at the start and every iterate.

    Args:
        norm: ``linf`` or ``l2``.
        eps: radius in [0, 1] pixel units.
        n_iter: iterations (gradient steps) after the start.
        start: per-image noise; the start is x + eps * start / ||start|| (the official random start), clipped to [0, 1].
        y_target: target classes: optimizes the targeted DLR loss; None: the cross-entropy.
        rho: a checkpoint halves the step of an image whose loss grew in at most this share of the steps.
        eot_iter: gradients averaged per step (expectation over transformation, for randomized models; the logits
            and loss are those of the last pass, as in the official code).
        precision: ``fp32``, or ``bf16``: forwards under bfloat16 autocast (loss in fp32 from the logits, summed);
            the verdict is then taken by fp32 forwards of the last iterate and of the point of lowest bf16 margin.
        adv: a tensor like ``x``, filled in place per image with the first checked point the model misclassifies,
            else the last iterate (the adversarial images of ``perturb``).
    """
    if eot_iter < 1:
        raise ZSBenchError(f"eot_iter must be at least 1 (got {eot_iter})")
    n = len(x)
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    bf16 = precision == "bf16"

    def loss_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        grad = None
        for _ in range(eot_iter):
            with attack_autocast(x.device, precision):
                logits = model(z)
            logits = logits.float()
            if y_target is None:
                loss = F.cross_entropy(logits, y, reduction="none")
            else:
                loss = dlr_targeted_loss(logits, y, y_target)
            (g,) = torch.autograd.grad(loss.sum(), z, allow_unused=True)
            g = torch.zeros_like(z) if g is None else g.detach().contiguous()  # (may be an expanded view)
            grad = g if grad is None else grad + g
        if eot_iter > 1:
            grad = grad / float(eot_iter)
        return logits.detach(), loss.detach(), grad

    robust = torch.ones(n, dtype=torch.bool, device=x.device)
    lowest = LowestMargin() if bf16 else None  # per image, the point of lowest bf16 margin so far

    def check(logits: torch.Tensor, z: torch.Tensor) -> None:
        if lowest is None:
            check_iterate(robust, logits.argmax(1) == y, adv, z)
        else:
            lowest.update(logits, y, z)

    x_adv = (x + eps * _normalize(start, norm)).clamp(0.0, 1.0)
    logits, loss_cur, grad = loss_and_grad(x_adv)
    check(logits, x_adv)
    last = x_adv  # the last point checked (a checkpoint may move x_adv back to x_best after it)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_cur.clone()
    step = torch.full((n,) + (1,) * (x.dim() - 1), 2.0 * eps, device=x.device)
    x_old = x_adv.clone()
    loss_steps = torch.zeros(n_iter, n, device=x.device)
    loss_best_last = loss_best.clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
    k, since_check = n_iter_2, 0

    for i in range(n_iter):
        with torch.no_grad():
            momentum_term = x_adv - x_old
            x_old = x_adv.clone()
            a = MOMENTUM if i > 0 else 1.0
            direction = grad.sign() if norm == "linf" else _normalize(grad, "l2")
            z = _project(x_adv + step * direction, x, eps, norm)
            x_adv = _project(x_adv + (z - x_adv) * a + momentum_term * (1 - a), x, eps, norm)

        logits, loss_cur, grad = loss_and_grad(x_adv)
        check(logits, x_adv)
        last = x_adv

        with torch.no_grad():
            loss_steps[i] = loss_cur
            better = loss_cur > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best[better] = loss_cur[better]

            since_check += 1
            if since_check == k:
                # loss increases between consecutive iterates since the last checkpoint; like the official code,
                # the first checkpoint compares the first iterate with row -1 (still zero) of loss_steps
                ups = torch.zeros(n, device=x.device)
                for c in range(k):
                    ups += (loss_steps[i - c] > loss_steps[i - c - 1]).float()
                reduce = (ups <= k * rho) | (~reduced_last & (loss_best_last >= loss_best))
                reduced_last = reduce.clone()
                loss_best_last = loss_best.clone()
                if reduce.any():
                    if adv is not None or bf16:
                        last = x_adv.clone()
                    step[reduce] /= 2.0
                    x_adv[reduce] = x_best[reduce]
                    grad[reduce] = grad_best[reduce]
                since_check = 0
                k = max(k - size_decr, n_iter_min)
    if lowest is not None:
        with torch.no_grad(), attack_autocast(x.device, verdict_precision(precision)):
            check_iterate(robust, model(lowest.point).argmax(1) == y, adv, lowest.point)
            check_iterate(robust, model(last).argmax(1) == y, adv, last)
    if adv is not None:
        adv[robust] = last[robust]
    return robust


def require_targeted_classes(n_classes: int) -> None:
    """Raise the one-line error of APGD-T for classifiers with fewer than 4 classes."""
    if n_classes < MIN_CLASSES_TARGETED_DLR:
        raise ZSBenchError(
            f"APGD-T needs at least {MIN_CLASSES_TARGETED_DLR} classes (its targeted DLR loss uses the 4th-largest "
            f"logit); this classifier has {n_classes}: use apgd-ce, or autoattack, which skips APGD-T and records it"
        )


def _check_loss(loss: str, expected: str, component: str) -> None:
    if loss != expected:
        raise ZSBenchError(f"{component} optimizes the {expected!r} loss only (got loss={loss!r})")


def _run_on_robust(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: torch.Tensor,
    robust: torch.Tensor,
    adv: torch.Tensor | None,
    stream: int,
    *,
    norm: str,
    y_target: torch.Tensor | None = None,
    **kwargs,
) -> bool:
    """One APGD run (a restart, or a target) on the points still ``robust``, updating ``robust`` and ``adv`` in place.

    Each point's random start comes from its seed and ``stream``; ``y_target`` (one class per image of ``x``) makes
    it targeted. The other keywords go to :func:`apgd_single`. Returns False when no point was left to attack.
    """
    idx = robust.nonzero().flatten()
    if len(idx) == 0:
        return False
    start = unit_noise(tuple(x.shape[1:]), stream_seeds(seeds[idx.cpu()], stream), x.device, norm)
    sub = None if adv is None else adv[idx]
    target = None if y_target is None else y_target[idx]
    robust[idx] = apgd_single(model, x[idx], y[idx], norm=norm, start=start, y_target=target, adv=sub, **kwargs)
    if adv is not None:
        adv[idx] = sub
    return True


def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int = DEFAULT_ITERATIONS,
    n_restarts: int = 1,
    rho: float = RHO,
    loss: str = "ce",
    eot_iter: int = 1,
    precision: str = "fp32",
    robust: torch.Tensor | None = None,
    adv: torch.Tensor | None = None,
) -> torch.Tensor:
    """APGD on the cross-entropy; restarts run on the points still robust. Expects eval mode and frozen parameters.

    Args:
        rho, eot_iter, precision: as in ``apgd_single``.
        loss: ``ce`` (the only loss of this component; given so that a setting that did not run cannot be recorded).
        robust: points to attack (default: those classified correctly); the others stay False.
        adv: a tensor like ``x`` (a copy of it): the adversarial image of every attacked point is written into it.
    """
    _check_loss(loss, "ce", "APGD-CE")
    robust = (clean_logits(model, x).argmax(1) == y) if robust is None else robust.clone()
    settings = {"norm": norm, "eps": eps, "n_iter": n_iter, "rho": rho, "eot_iter": eot_iter, "precision": precision}
    for r in range(n_restarts):
        if not _run_on_robust(model, x, y, seeds, robust, adv, _STREAM_APGD_CE * 1000 + r, **settings):
            break
    return robust


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int = DEFAULT_ITERATIONS,
    n_target_classes: int = N_TARGET_CLASSES,
    n_restarts: int = 1,
    rho: float = RHO,
    loss: str = "dlr-targeted",
    eot_iter: int = 1,
    precision: str = "fp32",
    robust: torch.Tensor | None = None,
    adv: torch.Tensor | None = None,
) -> torch.Tensor:
    """APGD on the targeted DLR loss against the 2nd, ..., (n_target_classes + 1)-th most likely clean classes.

    The number of targets is capped at n_classes - 1. Raises ZSBenchError with fewer than 4 classes. The other
    arguments are those of ``apgd_ce`` (``loss``: ``dlr-targeted`` only).
    """
    _check_loss(loss, "dlr-targeted", "APGD-T")
    logits = clean_logits(model, x)
    n_classes = logits.shape[1]
    require_targeted_classes(n_classes)
    robust = (logits.argmax(1) == y) if robust is None else robust.clone()
    order = logits.sort(dim=1).indices
    settings = {"norm": norm, "eps": eps, "n_iter": n_iter, "rho": rho, "eot_iter": eot_iter, "precision": precision}
    for target_class in range(2, min(n_target_classes, n_classes - 1) + 2):
        for r in range(n_restarts):
            stream = _STREAM_APGD_T * 1000 + target_class * 10 + r
            y_target = order[:, -target_class]
            if not _run_on_robust(model, x, y, seeds, robust, adv, stream, y_target=y_target, **settings):
                return robust
    return robust


def _attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    targeted: bool,
    track: bool = False,
) -> dict[Threat, tuple[torch.Tensor, torch.Tensor | None]]:
    """APGD-CE or APGD-T at every threat on one batch: {threat: (robust, adversarial images or None)}."""
    require_precision(threats, PRECISIONS_T if targeted else PRECISIONS_CE)
    for t in threats:
        if not t.random_start:  # rather than record random_start=False for a run that started at random
            raise ZSBenchError(f"attack {t.name!r} always starts from a random point (as the official APGD)")
    out = {}
    seeds = torch.as_tensor(seeds).cpu()
    with eval_mode_no_param_grad(model), attack_autocast(x.device, "fp32"):
        x = x.float()
        logits = clean_logits(model, x)
        if targeted:
            require_targeted_classes(logits.shape[1])
        clean = logits.argmax(1) == y
        for t in threats:
            n_iter = t.steps or DEFAULT_ITERATIONS
            adv = x.clone() if track else None
            kwargs = {"norm": t.norm, "eps": t.eps, "n_iter": n_iter, "precision": t.precision, "robust": clean}
            if t.eps == 0:  # the ball is the clean image
                robust = clean.clone()
            elif targeted:
                robust = apgd_targeted(model, x, y, seeds, adv=adv, **kwargs)
            else:
                robust = apgd_ce(model, x, y, seeds, adv=adv, **kwargs)
            out[t] = (robust, adv)
    return out


def run_apgd_ce(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[Threat], seeds: torch.Tensor
) -> dict[Threat, torch.Tensor]:
    """APGD-CE at every threat; ``threat.steps`` iterations (100 when 0); ``threat.step_size`` is not used."""
    return {t: robust for t, (robust, _) in _attack(model, x, y, threats, seeds, targeted=False).items()}


def run_apgd_t(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[Threat], seeds: torch.Tensor
) -> dict[Threat, torch.Tensor]:
    """APGD-T (targeted DLR, min(9, n_classes - 1) targets) at every threat; ZSBenchError with < 4 classes."""
    return {t: robust for t, (robust, _) in _attack(model, x, y, threats, seeds, targeted=True).items()}


class APGDCE(Attack):
    """APGD-CE at one threat."""

    targeted = False

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Per image the first point the attack misclassifies (the clean image where it is misclassified already),
        else the last iterate of the last restart (APGD-T: of the last target)."""
        return _attack(model, x, y, [self.threat], seeds, targeted=self.targeted, track=True)[self.threat][1]


class APGDT(APGDCE):
    """APGD-T (targeted DLR) at one threat; ``perturb`` as APGD-CE's."""

    targeted = True


_COMMON = {
    "n_iter": "threat.steps, or 100 when steps is 0",
    "n_restarts": 1,
    "rho": RHO,
    "momentum": MOMENTUM,
    "initial_step_size": "2 * eps (threat.step_size is not used)",
    "checkpoints": "first after 22% of the iterations, intervals shrinking by 3% down to 6%",
    "eot_iter": 1,
    "random_start_point": "x + eps * u / ||u||, u per image: seeded from (image seed, component, target, restart)",
    "loss_reduction": "sum",
    "robust_if": "correct on the clean image, at the start and at every iterate",
    "implementation": "robustbench_zs.attacks.apgd (algorithm and constants of fra31/auto-attack autopgd_base.py)",
}

APGD_CE_SETTINGS = {**_COMMON, "loss": "ce"}
APGD_T_SETTINGS = {
    **_COMMON,
    "loss": "dlr-targeted",
    "n_target_classes": "min(9, n_classes - 1): the 2nd..10th most likely clean classes",
    "fewer_than_4_classes": "refused with an error (the targeted DLR loss is undefined)",
}

ATTACKS.add(
    "apgd-ce",
    AttackEntry(
        name="apgd-ce",
        description="Auto-PGD on the cross-entropy (Croce & Hein 2020), L-inf or L2 (fp32; bf16); steps 0 = 100 "
        "iterations",
        run=run_apgd_ce,
        attack=APGDCE,
        fixed_settings=APGD_CE_SETTINGS,
        display="APGD-CE",
        default_steps=DEFAULT_ITERATIONS,
        uses_step_size=False,
        precisions=PRECISIONS_CE,
    ),
)
ATTACKS.add(
    "apgd-t",
    AttackEntry(
        name="apgd-t",
        description="targeted Auto-PGD on the DLR loss, 9 target classes (needs >= 4 classes; fp32); steps 0 = 100",
        run=run_apgd_t,
        attack=APGDT,
        fixed_settings=APGD_T_SETTINGS,
        display="APGD-T",
        default_steps=DEFAULT_ITERATIONS,
        uses_step_size=False,
        precisions=PRECISIONS_T,
        min_classes=MIN_CLASSES_TARGETED_DLR,
        undefined_why=f"APGD-T's targeted DLR loss needs at least {MIN_CLASSES_TARGETED_DLR} classes (it uses the "
        "4th-largest logit)",
    ),
)
