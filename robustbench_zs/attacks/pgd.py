"""Projected gradient descent (Madry et al., ICLR 2018), L-inf and L2, several eps in one call.

Differences from the official PMG-AFT/TeCoA test attack, by design (protocol.md section 4):
gradients are taken on the per-sample *summed* cross-entropy, so no sample's gradient is scaled by 1/batch, in fp32
(autocast off) by default, so nothing underflows; the random start of each image comes from a generator seeded by
(seed, image index), so results do not depend on the batch size or order; and a point counts as robust only if the
model classifies it correctly on its clean image (an fp32 forward) and at every PGD iterate (the worst iterate is
kept, as APGD does); ``perturb_pgd`` returns the first misclassified iterate (the adversarial image behind that
verdict).
With eps = 0 the iterates equal the clean image, so robust accuracy equals clean accuracy exactly.

``Threat.precision == "bf16"``: the attack's forward runs under bfloat16 autocast and the summed cross-entropy is still
computed in fp32 from ``logits.float()``; bf16 keeps fp32's exponent range, so the input gradient does not underflow.
A bf16 forward alone flips small-margin predictions, though, so the verdict is taken by fp32 forwards of the last
iterate and of the iterate with the lowest bf16 margin, not by the bf16 logits of every iterate (see ``pgd_single``;
tests/test_sanity.py bounds the disagreement with fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import ATTACKS, AttackEntry, Threat
from .precision import attack_autocast


@contextlib.contextmanager
def eval_mode_no_param_grad(model: nn.Module):
    """Put ``model`` in eval mode with frozen parameters; restore both on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def unit_noise(shape: tuple[int, ...], seeds: torch.Tensor, device: torch.device, norm: str) -> torch.Tensor:
    """One noise sample per image, each from its own generator: uniform in [-1, 1]^d (linf) or in the unit L2 ball."""
    out = torch.empty((len(seeds), *shape), device=device)
    gen = torch.Generator(device=device)
    d = int(torch.tensor(shape).prod())
    for i, s in enumerate(seeds.tolist()):
        gen.manual_seed(int(s))
        if norm == "linf":
            out[i].uniform_(-1.0, 1.0, generator=gen)
        else:
            v = torch.randn(shape, device=device, generator=gen)
            r = torch.rand((), device=device, generator=gen) ** (1.0 / d)
            out[i] = v / v.norm().clamp_min(1e-12) * r
    return out


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * torch.clamp(eps / n, max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def ascent_step(
    delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, step_size: float, eps: float, norm: str
) -> torch.Tensor:
    """One steepest-ascent step on the perturbation (sign of the gradient for L-inf, its direction for L2),
    projected back into the eps-ball and the [0, 1] box."""
    grad = grad.float()
    if norm == "linf":
        step = step_size * grad.sign()
    else:
        g = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        step = step_size * grad / g
    return _project(delta.detach() + step, x, eps, norm)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit (negative: misclassified), in fp32."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    return true - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the model classifies each clean image correctly: an fp32 forward (autocast off), no gradients."""
    with torch.no_grad(), attack_autocast(x.device, "fp32"):
        return model(x).argmax(dim=1) == y


def check_iterate(robust: torch.Tensor, ok: torch.Tensor, found: torch.Tensor | None, image: torch.Tensor) -> None:
    """``robust &= ok`` in place; with ``found``, first keep ``image`` for the points this check breaks.

    ``found`` thus holds, per point, the first checked image the model misclassifies (the adversarial image that
    ``perturb`` returns); the attacks call it on the images their verdict is taken on, in the order they check them.
    """
    if found is not None:
        newly = robust & ~ok
        found[newly] = image.detach()[newly]
    robust &= ok


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
    delta = torch.zeros_like(x)
    if threat.random_start and noise is not None and eps > 0:
        delta = _project(noise * eps, x, eps, norm)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device) if clean is None else clean.clone()
    found = x.clone() if first_broken else None
    candidate = x.clone() if precision == "bf16" else x  # bf16: per image, the iterate of lowest bf16 margin so far
    best = torch.full((len(x),), float("inf"), device=x.device)
    with attack_autocast(x.device, precision):
        for _ in range(threat.steps):
            delta.requires_grad_(True)
            x_it = x + delta
            logits = model(x_it)
            if precision == "fp32":
                check_iterate(robust, logits.argmax(dim=1) == y, found, x_it)
            elif precision == "bf16":
                with torch.no_grad():
                    margin = _margin(logits, y)
                    lower = margin < best
                    best = torch.where(lower, margin, best)
                    candidate[lower] = x_it.detach()[lower]
            if precision == "fp16":
                loss = F.cross_entropy(logits, y)  # as the official code: batch mean, autocast's own dtype rules
            elif loss_fn is None:
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
            else:
                loss = loss_fn(logits.float(), y).sum()
            (grad,) = torch.autograd.grad(loss, delta, allow_unused=True)
            if grad is None:  # logits that do not depend on the input
                grad = torch.zeros_like(delta)
            with torch.no_grad():
                delta = ascent_step(delta, grad, x, threat.step_size, eps, norm)
    verdict = "fp16" if precision == "fp16" else "fp32"
    with torch.no_grad(), attack_autocast(x.device, verdict):
        x_adv = x + delta
        if precision == "bf16" and threat.steps > 0:
            check_iterate(robust, model(candidate).argmax(dim=1) == y, found, candidate)
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


def perturb_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, seeds: torch.Tensor
) -> torch.Tensor:
    """PGD's adversarial images for one threat: per image the first iterate the model misclassifies (the clean image
    where it is misclassified already; in bf16 the fp32-checked iterate), else the last iterate."""
    return iterative_attack(model, x, y, [threat], seeds, first_broken=True)[threat][0]


ATTACKS.add(
    "pgd",
    AttackEntry(
        name="pgd",
        description="projected gradient descent, CE loss, uniform random start, L-inf or L2 (fp32; bf16; fp16 as "
        "the official code)",
        run=run_pgd,
        perturb=perturb_pgd,
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
