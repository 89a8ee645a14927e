"""PGD: it lowers accuracy on a model it can attack, respects its budget, and eps = 0 is the clean accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_zs.attacks import Threat, pgd_single, run_pgd
from robustbench_zs.datasets import select_subset
from robustbench_zs.engine import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _linf(eps255: float, steps: int = 10, step255: float = 1.0) -> Threat:
    return Threat("pgd", "linf", eps255 / 255, steps, step255 / 255)


def test_pgd_lowers_accuracy_of_an_attackable_model(centroid_classifier, synthetic_test):
    sub = select_subset(len(synthetic_test), 200, seed=0)
    res = evaluate(centroid_classifier, synthetic_test, [_linf(4), _linf(16, step255=4)], subset=sub, batch_size=100)
    clean = res.accuracy()
    assert clean > 0.8, "the centroid classifier should be accurate on clean synthetic images"
    assert res.accuracy(_linf(4)) < clean - 0.1
    assert res.accuracy(_linf(16, step255=4)) < 0.2
    # a point counts as robust only if it is also correct on its clean image
    for t, mask in res.robust.items():
        assert not np.any(mask & ~res.clean), t


def test_eps_zero_gives_exactly_the_clean_accuracy(centroid_classifier, synthetic_test):
    zero = _linf(0)
    res = evaluate(centroid_classifier, synthetic_test, [zero], batch_size=100)
    np.testing.assert_array_equal(res.robust[zero], res.clean)
    x = synthetic_test.images[:32].float() / 255
    y = synthetic_test.labels[:32]
    x_adv, _ = pgd_single(centroid_classifier, x, y, zero, torch.rand_like(x))
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.125)])
def test_perturbation_stays_in_the_ball_and_the_box(centroid_classifier, synthetic_test, norm, eps, step):
    x = synthetic_test.images[:64].float() / 255
    y = synthetic_test.labels[:64]
    t = Threat("pgd", norm, eps, 5, step)
    from robustbench_zs.attacks.core import unit_noise

    x_adv, robust = pgd_single(
        centroid_classifier, x, y, t, unit_noise(tuple(x.shape[1:]), torch.arange(64), x.device, norm)
    )
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.all(size <= eps + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert d.abs().sum() > 0, "the attack moved no pixel"
    with torch.no_grad():
        wrong_at_end = centroid_classifier(x_adv).argmax(1) != y
    assert not torch.any(robust & wrong_at_end), "robust points must be classified correctly at the final iterate"


def test_results_do_not_depend_on_batch_size(centroid_classifier, synthetic_test):
    t = _linf(2)
    sub = select_subset(len(synthetic_test), 128, seed=3)
    a = evaluate(centroid_classifier, synthetic_test, [t], subset=sub, batch_size=16, seed=7)
    b = evaluate(centroid_classifier, synthetic_test, [t], subset=sub, batch_size=64, seed=7)
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.robust[t], b.robust[t])


def test_attack_restores_train_mode_and_requires_grad(centroid_classifier, synthetic_test):
    model = centroid_classifier
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    x = synthetic_test.images[:8].float() / 255
    run_pgd(model, x, synthetic_test.labels[:8], [_linf(1, steps=2)], torch.arange(8))
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "the attack must not accumulate parameter gradients"
    model.eval()


def test_threat_labels_and_settings():
    t = _linf(1)
    assert t.label == "PGD-10 L∞ ε=1/255"
    assert t.slug == "pgd-linf-eps1-steps10"
    s = t.settings()
    assert s["eps"] == pytest.approx(1 / 255) and s["eps_255"] == 1.0 and s["step_size_255"] == 1.0
    assert s["loss_reduction"] == "sum" and s["precision"] == "fp32" and s["random_start"] is True
    assert Threat().settings() == {"name": "clean"}


def test_training_and_evaluation_attacks_are_one_pgd(centroid_classifier, synthetic_test):
    """``make_attack`` (the recipe's training PGD) and ``pgd_single`` run the same loop, ``pgd_ascent``: on the same
    loss, seeds and budget they end at the same images, bit for bit."""
    import torch.nn.functional as F

    from robustbench_zs.attacks.core import unit_noise
    from robustbench_zs.methods import Recipe
    from robustbench_zs.train.engine import make_attack

    model = centroid_classifier.eval()
    x, y, seeds = synthetic_test.images[:16].float() / 255, synthetic_test.labels[:16], torch.arange(16) + 9
    ce = lambda logits, labels: F.cross_entropy(logits, labels, reduction="none")  # noqa: E731
    recipe = Recipe(train_eps_255=4, train_steps=3, train_step_size_255=1.0, train_attack="pgd")
    trained = make_attack(model, x, seeds, recipe, "fp32")(lambda xa: ce(model(xa), y))
    noise = unit_noise(tuple(x.shape[1:]), seeds, x.device, "linf")
    evaluated, _ = pgd_single(model, x, y, _linf(4, steps=3), noise, loss_fn=ce)
    assert torch.equal(trained, evaluated) and not torch.equal(trained, x)


def test_every_registered_attack_is_an_attack_class():
    from robustbench_zs.attacks import ATTACKS, Attack

    for name in ATTACKS.names():
        assert issubclass(ATTACKS.get(name).attack, Attack), name
    with pytest.raises(TypeError):
        Attack(_linf(1))  # abstract: perturb is the one method every attack implements
