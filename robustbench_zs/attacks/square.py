"""Square Attack (Andriushchenko et al., ECCV 2020), L-inf, batched with one random stream per image.

``square_linf`` runs the L-inf Square Attack of ``torchattacks.Square`` (``perturb`` and ``attack_single_run``) on a
whole batch, and gives every image exactly the random numbers that torchattacks would draw for it if that image were
attacked alone after ``torch.random.manual_seed(seed)``. torchattacks' own batched L-inf run draws one square
position and one sign pattern per iteration for the whole batch (and its random start from one stream), so its
per-image results change with the batch; attacking one image at a time avoids that but costs one forward of one image
per query. Here every image has its own CPU ``torch.Generator`` (seeded like the global one), and the calls on it are
those of a one-image run, in order and shape:

- at the start of each restart that attacks the image: ``torch.rand([1, c, 1, w])`` (the random start, a sign per
  channel and column, repeated down the rows);
- at each iteration in which the image is still unbroken (margin > 0): ``torch.rand([1])`` (row of the square),
  ``torch.rand([1])`` (column), ``torch.rand([c, 1, 1])`` (the sign of the square per channel);
- nothing once it is broken (its one-image loop would have stopped), nor in the restarts after it was fooled.

The squares of different images therefore sit in different places; the square masks are built for all images at once
and all images still to break go through one forward per iteration. Everything else is torchattacks' L-inf code:
the p schedule (optionally rescaled to ``n_queries``), the square side ``max(round(sqrt(p * n_features / c)), 1)``,
the projection into the eps-ball and then [0, 1], the update rule (a candidate replaces the best point when its loss
is lower or it is misclassified, margin <= 0), the early stop, the restarts on the points not yet fooled, and the
return convention of ``perturb``: the image of the last restart's best point where the model's argmax is then wrong,
and the clean image everywhere else (points it could not fool, and points misclassified from the start, which draw
no random numbers at all). The random numbers are drawn on the CPU, as torchattacks does, whatever the device.
``SquareLinf`` is the same attack behind the ``Attack`` interface (it is not registered on its own: AutoAttack runs it
as a component).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, Threat
from .core import margin

LOSSES = ("margin", "ce")


def p_selection(p_init: float, it: int, n_queries: int, resc_schedule: bool) -> float:
    """torchattacks' schedule of the fraction p of pixels a square covers at iteration ``it``."""
    if resc_schedule:
        it = int(it / n_queries * 10000)
    for upper, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128)):
        if it <= upper:
            return p_init / divisor
    return p_init / (256 if it <= 8000 else 512)


def square_side(p: float, c: int, h: int, w: int) -> int:
    """The side of the L-inf square for fraction ``p`` (torchattacks: at least 1 pixel)."""
    return max(int(round(math.sqrt(p * (c * h * w) / c))), 1)


def _margin_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str):
    """Margin (true logit minus the best other one) and the loss to minimise (the margin, or minus the CE)."""
    logits = model(x)
    m = margin(logits, y)
    if loss == "margin":
        return m, m
    return m, -F.cross_entropy(logits, y, reduction="none")


def _signs(u: torch.Tensor) -> torch.Tensor:
    """torchattacks' ``random_choice``: sign(2u - 1) of uniform draws (0 where u is exactly 0.5)."""
    return torch.sign(2 * u - 1)


def _single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    gens: list[torch.Generator],
    eps: float,
    n_queries: int,
    p_init: float,
    loss: str,
    resc_schedule: bool,
) -> torch.Tensor:
    """One restart on the images ``x`` (torchattacks' ``attack_single_run``, L-inf); returns the best points."""
    n, c, h, w = x.shape
    dev = x.device
    start = torch.stack([torch.rand([1, c, 1, w], generator=g)[0] for g in gens])
    x_best = torch.clamp(x + eps * _signs(start).to(dev), 0.0, 1.0)
    margin_min, loss_min = _margin_and_loss(model, x_best, y, loss)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    for i_iter in range(n_queries):
        active = (margin_min > 0.0).nonzero().flatten()
        if len(active) == 0:
            break
        x_curr, x_best_curr, y_curr = x[active], x_best[active], y[active]
        margin_min_curr, loss_min_curr = margin_min[active], loss_min[active]

        s = square_side(p_selection(p_init, i_iter, n_queries, resc_schedule), c, h, w)
        u_h, u_w, u_sign = [], [], []
        for k in active.tolist():  # each image's own stream, in the order of its one-image run
            g = gens[k]
            u_h.append(torch.rand([1], generator=g))
            u_w.append(torch.rand([1], generator=g))
            u_sign.append(torch.rand([c, 1, 1], generator=g))
        vh = (0 + (h - s) * torch.cat(u_h)).long().to(dev)  # torchattacks' random_int(0, h - s), in float32
        vw = (0 + (w - s) * torch.cat(u_w)).long().to(dev)
        signs = _signs(torch.stack(u_sign)).to(dev)  # [m, c, 1, 1]
        in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + s)  # [m, h]
        in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + s)  # [m, w]
        square = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # [m, 1, h, w]
        new_deltas = torch.where(square, 2.0 * eps * signs, torch.zeros((), dtype=signs.dtype, device=dev))

        x_new = x_best_curr + new_deltas
        x_new = torch.min(torch.max(x_new, x_curr - eps), x_curr + eps)
        x_new = torch.clamp(x_new, 0.0, 1.0)

        margin, loss_new = _margin_and_loss(model, x_new, y_curr, loss)
        improved = loss_new < loss_min_curr
        loss_min[active] = torch.where(improved, loss_new, loss_min_curr)
        improved = improved | (margin <= 0.0)  # a misclassified candidate is always kept
        margin_min[active] = torch.where(improved, margin, margin_min_curr)
        x_best[active] = torch.where(improved[:, None, None, None], x_new, x_best_curr)
    return x_best


def square_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seeds: Sequence[int] | torch.Tensor,
    *,
    n_queries: int,
    p_init: float,
    loss: str = "margin",
    resc_schedule: bool = False,
    n_restarts: int = 1,
) -> torch.Tensor:
    """The untargeted L-inf Square Attack on a batch, each image with its own random stream.

    Per image the result is what ``torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries,
    n_restarts=n_restarts, p_init=p_init, loss=loss, resc_schedule=resc_schedule, seed=seeds[i]).perturb(x[i:i+1],
    y[i:i+1])`` returns (up to floating-point differences between the model's batched and one-image forwards): the
    adversarial image where a restart fooled the model's argmax, else the clean image. The global torch random state
    is not touched; the model's train/eval mode is left as it is.

    Args:
        seeds: one int per image, used as ``torch.random.manual_seed(seed)`` would be by a one-image run.
        loss: ``"margin"`` (true logit minus the best other one) or ``"ce"`` (minus the cross-entropy).
    """
    if loss not in LOSSES:
        raise ValueError(f"Square loss must be one of {LOSSES}, not {loss!r}")
    if x.dim() != 4:
        raise ValueError(f"square_linf needs images of shape [N, C, H, W], not {list(x.shape)}")
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != len(x) or len(y) != len(x):
        raise ValueError(f"square_linf: {len(x)} images, {len(y)} labels and {len(seeds)} seeds")
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        x = x.detach()
        y = y.detach().long()
        adv = x.clone()
        if len(x) == 0:
            return adv
        acc = model(x).max(1)[1] == y  # torchattacks' clean check (max(1)[1])
        for _ in range(n_restarts):
            idx = acc.nonzero().flatten()
            if len(idx) == 0:
                break
            x_to_fool, y_to_fool = x[idx], y[idx]
            best = _single_run(
                model,
                x_to_fool,
                y_to_fool,
                [gens[i] for i in idx.tolist()],
                eps,
                n_queries,
                p_init,
                loss,
                resc_schedule,
            )
            fooled = model(best).max(1)[1] != y_to_fool
            acc[idx[fooled]] = False
            adv[idx[fooled]] = best[fooled]
    return adv


class SquareLinf(Attack):
    """The L-inf Square Attack (``square_linf``) at one L-inf threat; ``Threat.steps`` and ``step_size`` are not used.

    Args:
        threat: its eps (L-inf only).
        settings: the keyword arguments of ``square_linf`` (``n_queries`` and ``p_init`` are required).
    """

    def __init__(self, threat: Threat, **settings) -> None:
        if threat.norm != "linf":
            raise ValueError(f"SquareLinf attacks in L-inf only, not {threat.norm}")
        super().__init__(threat)
        self.settings = settings

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """``square_linf``: the adversarial image where a restart fooled the model, else the clean image."""
        return square_linf(model, x, y, self.threat.eps, seeds, **self.settings)
