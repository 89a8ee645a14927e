"""PGD on the Carlini-Wagner margin loss, as the "CW" test attack of the official TeCoA and PMG-AFT code.

The official ``attack_CW`` (TeCoA ``attacks.py``, PMG-AFT ``PMG_AFT.py``) ascends
``-sum_i relu(z_y - max_{j != y} z_j + 50)``: the margin of the true class over the best other class, clipped below
at -kappa with kappa = 50 logits, summed over the batch; L-inf steps are ``step_size * sign(grad)``, L2 steps
``step_size * grad / ||grad||``, then projection onto the eps-ball and the [0, 1] box; step size and iterations come
from the threat. With PMG-AFT's logits at tau = 1 (cosines in [-1, 1]) the clip never binds, so the loss is the plain
margin; with tau = 100 it stops pushing an image once it is misclassified by 50 logits.

Like ``pgd`` (and unlike the official code): fp32 with autocast off, the random start of each image from its own
generator (uniform in the L-inf ball, or uniform in the L2 ball, where the official code scales a Gaussian direction
by U(0, 1) * eps), and a point counts as robust only if it is classified correctly on its clean image and at every
iterate.
"""

from __future__ import annotations

import torch
from torch import nn

from .apgd import require_fp32
from .base import ATTACKS, AttackEntry, Threat
from .pgd import _project, ascent_step, eval_mode_no_param_grad, unit_noise

KAPPA = 50.0


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = KAPPA) -> torch.Tensor:
    """Per-image loss to ascend: -relu(z_y - max_{j != y} z_j + kappa)."""
    onehot = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    correct = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(onehot, float("-inf")).amax(1)
    return -torch.relu(correct - wrong + kappa)


def cw_single(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack one batch at one eps. Returns (x_adv, robust) with robust[i] = correct at every iterate."""
    eps, norm = threat.eps, threat.norm
    delta = torch.zeros_like(x)
    if threat.random_start and noise is not None and eps > 0:
        delta = _project(noise * eps, x, eps, norm)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        for _ in range(threat.steps):
            delta.requires_grad_(True)
            logits = model(x + delta).float()
            robust &= logits.argmax(dim=1) == y
            loss = cw_margin_loss(logits, y).sum()
            (grad,) = torch.autograd.grad(loss, delta, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(delta)
            with torch.no_grad():
                delta = ascent_step(delta, grad, x, threat.step_size, eps, norm)
        with torch.no_grad():
            x_adv = x + delta
            robust &= model(x_adv).argmax(dim=1) == y
    return x_adv.detach(), robust


def run_cw(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[Threat], seeds: torch.Tensor
) -> dict[Threat, torch.Tensor]:
    """CW-margin PGD at every threat for one batch; ``seeds`` (one int per image) drive the random starts."""
    require_fp32(threats)
    out = {}
    with eval_mode_no_param_grad(model):
        x = x.float()
        with torch.no_grad():
            clean = model(x).argmax(dim=1) == y
        noise = {norm: unit_noise(tuple(x.shape[1:]), seeds, x.device, norm) for norm in {t.norm for t in threats}}
        for t in threats:
            _, robust = cw_single(model, x, y, t, noise[t.norm])
            out[t] = robust & clean
    return out


ATTACKS.add(
    "cw",
    AttackEntry(
        name="cw",
        description="PGD on the CW margin loss with kappa = 50 (the TeCoA/PMG-AFT test attack), L-inf or L2 (fp32)",
        run=run_cw,
        display="CW",
        default_steps=10,
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
