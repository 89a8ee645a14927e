"""What every attack shares: the precision policy, eval mode, random starts, projection, losses, the ascent step and
the bookkeeping of verdicts. Images are in [0, 1]; eps is in [0, 1] pixel units.

The precision policy (``Threat.precision``), the same for every attack:

- ``fp32``: autocast explicitly off (``attack_autocast``), so an attack run inside a caller's autocast region still
  computes in fp32; clean checks (``clean_logits``, ``clean_correct``) are fp32 forwards for every precision.
- ``bf16``: the model's forward runs under ``torch.autocast(dtype=torch.bfloat16)``; the attack loss is computed from
  ``logits.float()`` with a per-sample (summed) reduction (``ascent_loss``). bf16 has fp32's exponent range, so with
  summed losses the input gradients do not underflow the way fp16 ones with a batch-mean loss do (PMG-AFT issue #1,
  protocol.md section 4). A bf16 forward alone flips small-margin predictions, so the verdict is taken by fp32
  forwards (``verdict_precision``) of the last iterate and of the point of lowest bf16 margin (``LowestMargin``).
- ``fp16``: float16 autocast, only to reproduce the official PMG-AFT/TeCoA attack (the ``paper`` profile): with a
  batch-mean loss (``ascent_loss``) and no loss scaling its gradients underflow, so robust accuracy then depends on
  the batch size; the verdict is that of the float16 forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype per precision (``None``: autocast off); its keys are ``PRECISIONS``."""


def attack_autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast region an attack's forward runs in: off for ``fp32``, bfloat16 for ``bf16``, float16 for ``fp16``.

    Args:
        device: the device of the attacked images (its type picks the autocast backend).
        precision: one of ``PRECISIONS``.
    """
    if precision not in AUTOCAST_DTYPES:  # Threat validates against PRECISIONS; this guards direct callers
        raise ValueError(f"unknown attack precision {precision!r}; available: {', '.join(AUTOCAST_DTYPES)}")
    device_type = torch.device(device).type
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)


def verdict_precision(precision: str) -> str:
    """The precision of the forwards that decide robustness: fp32, except fp16 (the official code's own verdict)."""
    return "fp16" if precision == "fp16" else "fp32"


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


def clean_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits of the clean images in fp32: an fp32 forward (autocast off), no gradients."""
    with torch.no_grad(), attack_autocast(x.device, "fp32"):
        return model(x).float()


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the model classifies each clean image correctly (``clean_logits``)."""
    return clean_logits(model, x).argmax(dim=1) == y


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


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The perturbation ``delta`` projected into the eps-ball, then so that ``x + delta`` lies in the [0, 1] box."""
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
    return project(delta.detach() + step, x, eps, norm)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit (negative: misclassified), in fp32."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    return true - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def ascent_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The scalar a PGD-type attack ascends, from the logits of one iterate.

    fp32 and bf16: the per-image ``loss_fn`` (default: the cross-entropy) of the fp32 logits, summed over the batch,
    so no image's gradient is scaled by 1/batch. fp16: the official test attack's batch-mean cross-entropy under
    autocast's own dtype rules (``loss_fn`` is refused there).
    """
    if precision == "fp16":
        if loss_fn is not None:
            raise ValueError("fp16 reproduces the official PGD and ascends its batch-mean cross-entropy only")
        return F.cross_entropy(logits, y)  # as the official code: batch mean, autocast's own dtype rules
    if loss_fn is None:
        return F.cross_entropy(logits.float(), y, reduction="sum")
    return loss_fn(logits.float(), y).sum()


def check_iterate(robust: torch.Tensor, ok: torch.Tensor, found: torch.Tensor | None, image: torch.Tensor) -> None:
    """``robust &= ok`` in place; with ``found``, first keep ``image`` for the points this check breaks.

    ``found`` thus holds, per point, the first checked image the model misclassifies (the adversarial image that
    ``perturb`` returns); the attacks call it on the images their verdict is taken on, in the order they check them.
    """
    if found is not None:
        newly = robust & ~ok
        found[newly] = image.detach()[newly]
    robust &= ok


class LowestMargin:
    """bf16 attacks: per image, the checked point of lowest bf16 margin so far, which the fp32 verdict checks.

    Args:
        start: the points to keep until a lower margin is seen (their margin counts as +inf); None: the first
            ``update`` keeps its points and their margins.
    """

    def __init__(self, start: torch.Tensor | None = None) -> None:
        self.point = None if start is None else start.clone()
        self.margin = None if start is None else torch.full((len(start),), float("inf"), device=start.device)

    def update(self, logits: torch.Tensor, y: torch.Tensor, points: torch.Tensor) -> None:
        """Keep, per image, ``points`` where their margin (from ``logits``) is lower than the lowest so far."""
        m = margin(logits, y)
        if self.point is None:
            self.point, self.margin = points.clone(), m
            return
        lower = m < self.margin
        self.margin = torch.where(lower, m, self.margin)
        self.point[lower] = points.detach()[lower]
