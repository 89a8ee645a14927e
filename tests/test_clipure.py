"""CLIPure-Cos (``clipure``): its unrolled gradient is the exact one, its forward is deterministic and the identity at
0 steps, the official batch normalization couples the images of a batch, and hostile configs are refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import robustbench_zs.methods.clipure as clipure
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods.defense import HeldSteps
from robustbench_zs.models import ZeroShotClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def blank_text(dim: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(1, dim, generator=g, dtype=dtype), dim=-1)


def make_defense(classifier, **knobs) -> clipure.LatentPurifier:
    seen = []

    def embed_text(names):
        seen.append(list(names))
        return blank_text(classifier.head.shape[1]).to(classifier.head)

    method = clipure.Clipure(clipure.ClipureConfig(**knobs))
    defense = method.build_defense(classifier, embed_text)
    assert seen == [[""]]  # the blank prompt: the run's templates with an empty class name
    return defense


def images(classifier, n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, 3, *classifier.image_size, generator=g)
    return x.to(device=classifier.head.device, dtype=dtype)


@pytest.fixture(scope="module")
def classifier64(centroid_classifier):
    return copy.deepcopy(centroid_classifier).double()  # a copy: the session's tiny model stays fp32


def directional(defense, x, v, w) -> tuple[float, float]:
    """(autograd's derivative of ``sum(w * defense(x))`` along ``v``, its central finite difference)."""
    h = 1e-5
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad((w * defense(xg)).sum(), xg)
    with torch.no_grad():
        fd = ((w * defense(x + h * v)).sum() - (w * defense(x - h * v)).sum()) / (2 * h)
    return float((grad * v).sum()), float(fd)


@pytest.mark.parametrize("knobs", [{}, {"steps": 9}, {"grad_norm": "batch", "step_size": 2.0}])
def test_unrolled_gradient_matches_finite_differences_and_the_masked_one_does_not(classifier64, knobs):
    defense = make_defense(classifier64, **knobs)
    x = images(classifier64, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w = torch.randn(2, classifier64.num_classes, generator=g, dtype=torch.float64)
    exact, fd = directional(defense, x, v, w)
    assert abs(fd) > 1e-3  # a derivative worth comparing
    assert abs(exact - fd) <= 1e-4 * abs(fd), (exact, fd)

    # the official code's gradient: each step's direction a constant (no create_graph) -> masked, far from the truth
    masked, fd_again = directional(HeldSteps(defense), x, v, w)  # the non-adaptive evaluation's attack (held steps)
    assert fd_again == fd  # the forward is the same
    assert abs(masked - fd) > 0.5 * abs(fd), (masked, fd)
    if defense.config.step_size == 30:
        assert abs(masked) < 1e-6 * abs(fd)  # about step_size^-steps of it


def test_forward_is_deterministic_finite_and_the_identity_at_zero_steps(centroid_classifier):
    x = images(centroid_classifier, 4)
    defense = make_defense(centroid_classifier)
    assert not defense.randomized and defense.inference_optimization and defense.bpda == {}
    a, b = defense(x), defense(x)
    assert a.shape == (4, centroid_classifier.num_classes) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not a.requires_grad
    with torch.no_grad():
        plain = centroid_classifier(x)
    assert not torch.allclose(a, plain, atol=1e-3)  # the purification moves the logits
    assert torch.equal(make_defense(centroid_classifier, steps=0)(x), plain)
    # deterministic: one sample, no EOT, in the adaptive evaluation's record
    block = clipure.Clipure.evaluation_block("adaptive")
    assert clipure.Clipure.eot_samples == 1 and block["eot_samples"] == 1 and block["bpda"] == {}
    assert clipure.Clipure.evaluation_block("adaptive", eot_samples=20)["eot_samples"] == 1


def test_batch_gradient_norm_couples_a_batch_and_per_image_does_not(centroid_classifier):
    x = images(centroid_classifier, 4)
    for grad_norm, coupled in (("batch", True), ("per_image", False)):
        defense = make_defense(centroid_classifier, grad_norm=grad_norm)
        alone, together = defense(x[:1]), defense(x)[:1]
        assert torch.allclose(alone, together, atol=1e-3) != coupled, grad_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_embedding_at_the_blank_text_stays_finite(dtype):
    """The step direction g / ||g|| is singular where g = 0 (the embedding at the blank text or its antipode): there
    the purification takes no step, and it and its unrolled gradient stay finite."""
    dim = 512  # CLIP's size: the rounding noise of the cosine's gradient grows with it
    head = torch.nn.functional.normalize(torch.randn(5, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    identity = ZeroShotClassifier(torch.nn.Identity(), head, (2, 4), (0, 0, 0), (1, 1, 1), 100.0)
    for seed in range(5):
        blank = blank_text(dim, seed, dtype)
        defense = clipure.Clipure().build_defense(identity, lambda names, blank=blank: blank)
        emb = torch.cat([blank, -blank, 3 * blank, -0.5 * blank]).requires_grad_(True)
        with torch.enable_grad():
            u = defense.purify(emb, unroll=True)
            (grad,) = torch.autograd.grad((u * torch.arange(dim, dtype=dtype)).sum(), emb)
        assert torch.isfinite(u).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(u.detach(), torch.cat([blank, -blank, blank, -blank]))  # no step taken
        # off the singularity, a step is the official code's full one (atan(30) = 88 degrees: past the blank text)
        one_step = clipure.Clipure(clipure.ClipureConfig(steps=1)).build_defense(
            identity, lambda names, blank=blank: blank
        )
        off = torch.nn.functional.normalize(blank + 0.01 * blank_text(dim, seed + 100, dtype), dim=-1)
        assert float(one_step.purify(off, unroll=False).detach()[0] @ blank[0]) < 0.1


@pytest.mark.parametrize("steps", [1, 2, 9, 10])
def test_per_image_steps_of_30_go_back_and_forth_across_the_blank_text(steps):
    """Each step turns the embedding by atan(step_size) (88.09 degrees at 30) towards the blank text, in the plane of
    the two: one within that angle of it crosses it and the next step brings it back exactly, so an even number of
    steps (the official 10) leaves it where it was (cosine to the blank text above 0.033: CLIP's images)."""
    dim = 512
    g = torch.Generator().manual_seed(0)
    blank = blank_text(dim, dtype=torch.float64)
    head = torch.nn.functional.normalize(torch.randn(5, dim, generator=g, dtype=torch.float64), dim=-1)
    identity = ZeroShotClassifier(torch.nn.Identity(), head, (2, 4), (0, 0, 0), (1, 1, 1), 100.0)
    defense = clipure.Clipure(clipure.ClipureConfig(steps=steps)).build_defense(identity, lambda names: blank)
    cos = torch.tensor([[0.05], [0.2], [0.3], [0.9]], dtype=torch.float64)
    r = torch.randn(4, dim, generator=g, dtype=torch.float64)
    r = torch.nn.functional.normalize(r - (r @ blank.T) * blank, dim=-1)  # orthogonal to the blank text
    u = cos * blank + (1 - cos**2).sqrt() * r
    out = defense.purify(u, unroll=False).detach()
    angle = torch.acos(cos[:, 0]) - math.atan(30) * (steps % 2)  # signed, towards the blank text
    expected = torch.cos(angle)[:, None] * blank + torch.sin(angle)[:, None] * r
    torch.testing.assert_close(out, expected)
    if steps % 2 == 0:
        torch.testing.assert_close(out, u)


@pytest.mark.parametrize(
    "knobs",
    [
        {"steps": -1},
        {"steps": 101},
        {"steps": 2.5},
        {"steps": True},
        {"step_size": float("nan")},
        {"step_size": float("inf")},
        {"step_size": -1.0},
        {"step_size": 1e9},
        {"grad_norm": "global"},
    ],
)
def test_hostile_configs_are_refused(knobs):
    with pytest.raises(ZSBenchError, match="clipure") as info:
        clipure.Clipure(clipure.ClipureConfig(**knobs))
    assert "\n" not in str(info.value)


def test_hostile_overrides_and_blank_texts_are_refused(centroid_classifier):
    with pytest.raises(ZSBenchError):
        clipure.ClipureConfig.from_overrides({"steps": "ten"})
    with pytest.raises(ZSBenchError, match="grad_norm"):
        clipure.ClipureConfig.from_overrides({"grad_norm": "nope"})
    method = clipure.Clipure()
    dim = centroid_classifier.head.shape[1]
    for bad in (torch.zeros(1, dim), torch.full((1, dim), float("nan")), torch.ones(2, dim), torch.ones(1, dim + 1)):
        with pytest.raises(ZSBenchError, match="clipure"):
            method.build_defense(centroid_classifier, lambda names, bad=bad: bad)
