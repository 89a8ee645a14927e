"""Projected gradient descent (Madry et al., ICLR 2018), L-inf and L2, several eps in one call.

``pgd_ascent`` is the one PGD loop of the package: random start, sign (L-inf) or normalized (L2) steps, projection
onto the eps-ball and the [0, 1] box, optional sign momentum; it ascends whatever loss it is given. The evaluation
attack (``pgd_single``, and ``cw`` with its margin loss) and the training attack (``train.engine.make_attack``) both
run on it.

Differences of the evaluation attack from the official PMG-AFT/TeCoA test attack, by design (protocol.md section 4):
gradients are taken on the per-sample *summed* cross-entropy, so no sample's gradient is scaled by 1/batch, in fp32
(autocast off) by default, so nothing underflows; the random start of each image comes from a generator seeded by
(seed, image index), so results do not depend on the batch size or order; and a point counts as robust only if the
model classifies it correctly on its clean image (an fp32 forward) and at every PGD iterate (the worst iterate is
kept, as APGD does); ``PGD.perturb`` returns the first misclassified iterate (the adversarial image behind that
verdict).
With eps = 0 the iterates equal the clean image, so robust accuracy equals clean accuracy exactly.

``Threat.precision == "bf16"``: the attack's forward runs under bfloat16 autocast and the summed cross-entropy is still
computed in fp32 from ``logits.float()``; bf16 keeps fp32's exponent range, so the input gradient does not underflow.
A bf16 forward alone flips small-margin predictions, though, so the verdict is taken by fp32 forwards of the last
iterate and of the iterate with the lowest bf16 margin, not by the bf16 logits of every iterate (see ``pgd_single``;
tests/test_sanity.py bounds the disagreement with fp32). The precision policy itself is in ``attacks.core``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import ATTACKS, Attack, AttackEntry, Threat
from .core import (
    LowestMargin,
    ascent_loss,
    ascent_step,
    attack_autocast,
    check_iterate,
    clean_correct,
    eval_mode_no_param_grad,
    project,
    unit_noise,
    verdict_precision,
)


def pgd_ascent(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    start: torch.Tensor | None = None,
    project_start: bool = True,
    momentum: float | None = None,
) -> torch.Tensor:
    """PGD ascent of ``objective`` around ``x``; returns the perturbation after the last step.

    Each step differentiates ``objective(x + delta)`` (a scalar) with respect to ``delta`` only (an objective that
    does not depend on the images gives a zero gradient), then takes ``ascent_step``. The caller brings the autocast
    region and the model's mode.

    Args:
        objective: images -> the scalar to ascend (it may record what it sees of each iterate).
        x: the clean images, in [0, 1].
        eps, step_size: in [0, 1] pixel units (L-inf: per coordinate; L2: Euclidean length).
        steps: gradient steps.
        norm: ``linf`` or ``l2``.
        start: per-image noise in the unit ball (``unit_noise``): the first iterate is ``x + start * eps``; None: the
            clean images.
        project_start: project that start into the eps-ball and the box (TeCoA/PMG-AFT, and the evaluation attack);
            RobustVLM's training attack takes its first gradient at the unprojected start.
        momentum: RobustVLM's sign momentum (L-inf): ``v = sign(momentum * v + sign(grad))`` and the step follows
            ``v``; None: plain steepest ascent.
    """
    delta = torch.zeros_like(x)
    if start is not None:
        delta = start * eps
        if project_start:
            delta = project(delta, x, eps, norm)
    velocity = None if momentum is None else torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = objective(x + delta)
        (grad,) = torch.autograd.grad(loss, delta, allow_unused=True)
        if grad is None:  # an objective that does not depend on the input
            grad = torch.zeros_like(delta)
        with torch.no_grad():
            if velocity is not None:
                velocity = (momentum * velocity + grad.sign()).sign()
                grad = velocity
            delta = ascent_step(delta, grad, x, step_size, eps, norm)
    return delta


def pgd_single(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    noise: torch.Tensor | None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clean: torch.Tensor | None = None,
    first_broken: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack one batch at one eps. Returns (x_adv, robust): the last iterate, and whether the model stays correct.

    fp32: robust[i] = correct at every iterate. bf16: the iterates and their gradients come from the bf16 forward, but
    the verdict is taken in fp32 on the last iterate and on the iterate with the lowest bf16 margin, because a bf16
    forward alone flips the prediction of small-margin points (on the tiny test classifier, a quarter of the clean
    images): a point counts as broken only if the fp32 model misclassifies a point the attack found. fp16: the
    official PMG-AFT/TeCoA test attack, for the ``paper`` profile: float16 autocast, the batch-mean cross-entropy
    without loss scaling, and the verdict of the float16 forward on the last iterate.

    Args:
        loss_fn: per-image loss to ascend, from fp32 logits and labels (default: the cross-entropy); its sum over the
            batch is differentiated. fp16 always ascends the official batch-mean cross-entropy.
        clean: per-image clean correctness: robust starts from it, so a point misclassified clean is never robust.
        first_broken: x_adv is then, per image, the first checked image the model misclassifies (the clean image
            where ``clean`` is False, else the first such iterate), and the last iterate where it stays robust.
    """
    eps, norm, precision = threat.eps, threat.norm, threat.precision
    if precision == "fp16" and loss_fn is not None:
        raise ValueError("fp16 reproduces the official PGD and ascends its batch-mean cross-entropy only")
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device) if clean is None else clean.clone()
    found = x.clone() if first_broken else None
    lowest = LowestMargin(x) if precision == "bf16" else None

    def objective(x_it: torch.Tensor) -> torch.Tensor:
        logits = model(x_it)
        if precision == "fp32":
            check_iterate(robust, logits.argmax(dim=1) == y, found, x_it)
        elif lowest is not None:
            with torch.no_grad():
                lowest.update(logits, y, x_it)
        return ascent_loss(logits, y, precision, loss_fn)

    start = noise if threat.random_start and noise is not None and eps > 0 else None
    with attack_autocast(x.device, precision):
        delta = pgd_ascent(
            objective, x, eps=eps, step_size=threat.step_size, steps=threat.steps, norm=norm, start=start
        )
    with torch.no_grad(), attack_autocast(x.device, verdict_precision(precision)):
        x_adv = x + delta
        if lowest is not None and threat.steps > 0:
            check_iterate(robust, model(lowest.point).argmax(dim=1) == y, found, lowest.point)
        check_iterate(robust, model(x_adv).argmax(dim=1) == y, found, x_adv)
    if found is not None:
        found[robust] = x_adv[robust]
        return found, robust
    return x_adv.detach(), robust


def iterative_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    first_broken: bool = False,
    clean: torch.Tensor | None = None,
) -> dict[Threat, tuple[torch.Tensor, torch.Tensor]]:
    """``pgd_single`` at every threat on one batch, clean-checked, in eval mode: {threat: (x_adv, robust)}.

    The random start of each image comes from its seed; ``run_pgd``, ``run_cw`` and their ``perturb`` share this.
    ``clean``: the clean correctness when the caller has it (the evaluator), else one fp32 forward computes it.
    """
    out = {}
    with eval_mode_no_param_grad(model):
        x = x.float()
        clean = clean_correct(model, x, y) if clean is None else clean.to(x.device, torch.bool)
        noise = {norm: unit_noise(tuple(x.shape[1:]), seeds, x.device, norm) for norm in {t.norm for t in threats}}
        for t in threats:
            out[t] = pgd_single(model, x, y, t, noise[t.norm], loss_fn=loss_fn, clean=clean, first_broken=first_broken)
    return out


def run_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    *,
    clean: torch.Tensor | None = None,
) -> dict[Threat, torch.Tensor]:
    """PGD at every threat (eps) for one batch; ``seeds`` (one int per image) drive the random starts.

    Returns per threat the robust mask: correct on the clean image (fp32; ``clean`` if given) and at every iterate.
    """
    return {t: robust for t, (_, robust) in iterative_attack(model, x, y, threats, seeds, clean=clean).items()}


class PGD(Attack):
    """PGD on the cross-entropy at one threat."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Per image the first iterate the model misclassifies (the clean image where it is misclassified already; in
        bf16 the fp32-checked iterate), else the last iterate."""
        return iterative_attack(model, x, y, [self.threat], seeds, first_broken=True)[self.threat][0]


ATTACKS.add(
    "pgd",
    AttackEntry(
        name="pgd",
        description="projected gradient descent, CE loss, uniform random start, L-inf or L2 (fp32; bf16; fp16 as "
        "the official code)",
        run=run_pgd,
        attack=PGD,
        takes_clean=True,
        display="PGD",
        default_steps=10,
        precisions=("fp32", "bf16", "fp16"),
        fixed_settings={
            "loss": "ce",
            "loss_reduction": "sum",
            "restarts": 1,
            "random_start_seed": "per image: seed * 1000003 + index",
            "robust_if": "correct on the clean image and at every iterate",
            "implementation": "robustbench_zs.attacks.pgd",
        },
        precision_settings={
            # the official test attack: CrossEntropyLoss() (a batch mean) and the verdict of the last iterate
            "fp16": {
                "loss_reduction": "mean",
                "robust_if": "correct on the clean image and at the last iterate (its float16 forward)",
            }
        },
    ),
)
