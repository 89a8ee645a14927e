"""PGD on the Carlini-Wagner margin loss, as the "CW" test attack of the official TeCoA and PMG-AFT code.

The official ``attack_CW`` (TeCoA ``attacks.py``, PMG-AFT ``PMG_AFT.py``) ascends
``-sum_i relu(z_y - max_{j != y} z_j + 50)``: the margin of the true class over the best other class, clipped below
at -kappa with kappa = 50 logits, summed over the batch; L-inf steps are ``step_size * sign(grad)``, L2 steps
``step_size * grad / ||grad||``, then projection onto the eps-ball and the [0, 1] box; step size and iterations come
from the threat. With PMG-AFT's logits at tau = 1 (cosines in [-1, 1]) the clip never binds, so the loss is the plain
margin; with tau = 100 it stops pushing an image once it is misclassified by 50 logits.

It runs on ``attacks.pgd.pgd_single`` (hence ``pgd_ascent``) with this loss, so like ``pgd`` (and unlike the
official code): fp32 with autocast off (bf16 is refused, see ``PRECISIONS``); the random start of each image from its
own generator (uniform in the L-inf ball, or uniform in the L2 ball, where the official code scales a Gaussian
direction by U(0, 1) * eps); and a point counts as robust only if it is classified correctly on its clean image and at
every iterate.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ATTACKS, Attack, AttackEntry, Threat, require_precision
from .core import margin
from .pgd import iterative_attack

KAPPA = 50.0
PRECISIONS = ("fp32",)
"""CW stays fp32: its margin loss is a difference of two logits, and at logit scale 100 bf16 logits are 0.5 apart, so
the top two tie on many images and the gradient follows the wrong class; bf16 CW left 7 points more robust accuracy
than fp32 on the tiny test classifier even with an fp32 check of every iterate (cross-entropy PGD: 0 points)."""


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = KAPPA) -> torch.Tensor:
    """Per-image loss to ascend: -relu(z_y - max_{j != y} z_j + kappa), from the fp32 logits."""
    return -torch.relu(margin(logits, y) + kappa)


def run_cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: list[Threat],
    seeds: torch.Tensor,
    *,
    clean: torch.Tensor | None = None,
) -> dict[Threat, torch.Tensor]:
    """CW-margin PGD at every threat for one batch; ``seeds`` (one int per image) drive the random starts."""
    require_precision(threats, PRECISIONS)
    attacked = iterative_attack(model, x, y, threats, seeds, loss_fn=cw_margin_loss, clean=clean)
    return {t: robust for t, (_, robust) in attacked.items()}


class CW(Attack):
    """PGD on the CW margin loss at one threat."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """The first misclassified iterate, else the last (as ``PGD.perturb``)."""
        t = self.threat
        require_precision([t], PRECISIONS)
        return iterative_attack(model, x, y, [t], seeds, loss_fn=cw_margin_loss, first_broken=True)[t][0]


ATTACKS.add(
    "cw",
    AttackEntry(
        name="cw",
        description="PGD on the CW margin loss with kappa = 50 (the TeCoA/PMG-AFT test attack), L-inf or L2 (fp32)",
        run=run_cw,
        attack=CW,
        takes_clean=True,
        display="CW",
        default_steps=10,
        precisions=PRECISIONS,
        fixed_settings={
            "loss": "cw margin: -relu(z_y - max_{j != y} z_j + kappa)",
            "kappa": KAPPA,
            "loss_reduction": "sum",
            "restarts": 1,
            "random_start_seed": "per image, from the image's seed (as pgd)",
            "robust_if": "correct on the clean image and at every iterate",
            "implementation": "robustbench_zs.attacks.cw (loss of TeCoA/PMG-AFT attack_CW)",
        },
    ),
)
