"""The interface every registered attack shares, tested over the registry (a new attack is covered by registering it).

Images in [0, 1], eps in [0, 1]; ``run`` returns robust masks that imply clean correctness; ``perturb`` returns
adversarial images in the eps-ball and the [0, 1] box that the model misclassifies exactly where ``run`` says the
point is not robust; both restore the model's train/eval mode and ``requires_grad`` flags.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from robustbench_zs.attacks import ATTACKS, Threat, pgd_single
from robustbench_zs.attacks.core import unit_noise

DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))
EPS = {"linf": 2 / 255, "l2": 0.25}


pytestmark = pytest.mark.usefixtures("one_thread")


def _threat(name: str, norm: str, eps: float | None = None, precision: str = "fp32") -> Threat:
    """A short threat of attack ``name``, built from its registry metadata (steps, step size)."""
    entry = ATTACKS.get(name)
    eps = EPS[norm] if eps is None else eps
    steps = 0 if entry.default_steps is None else 4
    step = eps / 4 if entry.uses_step_size else 0.0
    return Threat(name, norm, eps, steps, step, precision=precision)


class GridTrap(nn.Module):
    """Misclassifies exactly the images on the 1/255 grid (every clean image) and calls every other image class 0.

    An attack whose verdict looks only at its iterates (which a random start moves off the grid) calls every point
    robust here, although none is classified correctly on its clean image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.detach() * 255
        on_grid = ((level - level.round()).abs() < 1e-3).flatten(1).all(1)
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, 0] = (~on_grid).float()
        logits[:, 1] = on_grid.float()
        return logits + self.w * 0 + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_every_attack_has_the_whole_interface():
    for name in ATTACKS.names():
        entry = ATTACKS.get(name)
        assert callable(entry.run) and callable(entry.perturb), name
        assert "fp32" in entry.precisions, name


@pytest.mark.parametrize("name", ATTACKS.names())
def test_robust_implies_clean_correct_for_every_attack(name, synthetic_test, centroid_classifier, quick_standard):
    entry = ATTACKS.get(name)
    x = (synthetic_test.images[:6].float() / 255).to(DEVICE)
    trap = GridTrap().to(DEVICE)
    y0 = torch.zeros(6, dtype=torch.long, device=DEVICE)
    with torch.no_grad():
        assert not torch.any(trap(x).argmax(1) == y0), "every clean image is misclassified"
    t = _threat(name, "linf", eps=1.5 / 255)  # off the grid: the ball's corners are not grid points either
    if name == "pgd":  # the trap works: PGD's iterates alone say robust
        noise = unit_noise(tuple(x.shape[1:]), torch.arange(6), x.device, "linf")
        assert pgd_single(trap, x, y0, t, noise)[1].all()
    for precision in entry.precisions:
        tp = _threat(name, "linf", eps=1.5 / 255, precision=precision)
        robust = entry.run(trap, x, y0, [tp], torch.arange(6))[tp]
        assert robust.dtype == torch.bool and robust.shape == (6,)
        assert not robust.any(), (name, precision)
    # and on a real classifier, with one clean mistake among the images
    x, y = (synthetic_test.images[:12].float() / 255).to(DEVICE), synthetic_test.labels[:12].clone().to(DEVICE)
    y[0] = (y[0] + 1) % 10
    with torch.no_grad():
        clean = centroid_classifier(x).argmax(1) == y
    assert not clean[0]
    for norm in entry.norms:
        t = _threat(name, norm)
        robust = entry.run(centroid_classifier, x, y, [t], torch.arange(12))[t]
        assert not torch.any(robust & ~clean), (name, norm)


@pytest.mark.parametrize("name,norm", [(n, norm) for n, e in ATTACKS.items() for norm in e.norms])
def test_perturb_returns_the_images_behind_the_verdict(name, norm, synthetic_test, centroid_classifier, quick_standard):
    entry = ATTACKS.get(name)
    model = centroid_classifier
    x = (synthetic_test.images[40:56].float() / 255).to(DEVICE)
    y = synthetic_test.labels[40:56].clone().to(DEVICE)
    y[3] = (y[3] + 1) % 10  # one point misclassified on its clean image
    seeds = torch.arange(40, 56) + 3 * 1_000_003
    t = _threat(name, norm)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.train()
    try:
        x_adv = entry.perturb(model, x, y, t, seeds)
        assert model.training, "perturb must restore train mode"
        assert [p.requires_grad for p in params] == flags and all(p.grad is None for p in params)
        model.eval()
        robust = entry.run(model, x, y, [t], seeds)[t]
        assert not model.training, "run must leave eval mode as it found it"
    finally:
        model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.all(size <= t.eps + 1e-6), (name, norm, float(size.max()))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    assert torch.equal(fooled & clean, clean & ~robust), (name, norm)  # exactly the clean-correct non-robust points
    assert torch.equal(fooled, ~robust)  # and a clean mistake is returned as the clean image: fooled, not robust
    assert torch.equal(x_adv[3], x[3])
    assert 0 < int(robust.sum()) < int(clean.sum()), "both outcomes should occur"
    assert torch.any(d[robust].abs().sum(1) > 0), "robust points should carry the attack's perturbation"
