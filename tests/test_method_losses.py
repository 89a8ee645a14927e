"""Losses and the four full-encoder methods (ft_standard, tecoa, pmg_aft, fare).

Expected values are computed independently: numpy with explicit loops/formulas on small hand-made arrays, or
torch's own KLDivLoss, never by calling the code under test twice.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustbench_zs.methods.fare  # noqa: F401  (registration)
import robustbench_zs.methods.ft_standard  # noqa: F401
import robustbench_zs.methods.pmg_aft  # noqa: F401
import robustbench_zs.methods.tecoa  # noqa: F401
from robustbench_zs.datasets import DATASETS
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import METHODS, Step
from robustbench_zs.methods.fare import FARE
from robustbench_zs.methods.ft_standard import FTStandard
from robustbench_zs.methods.losses import fare_loss, fare_loss_per_sample, kl_div, pmg_aft_loss
from robustbench_zs.methods.pmg_aft import PMGAFT, PMGAFTConfig
from robustbench_zs.methods.tecoa import TeCoA
from robustbench_zs.models import NORMALIZATIONS, ZeroShotClassifier

# ---------------------------------------------------------------------------------------------------------------
# independent reference computations (numpy, float64, loops over samples)

P = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 4.0, 1.0, -0.5]])
Q = np.array([[0.0, 1.0, -0.5, 2.0], [1.5, -1.5, 0.0, 0.2], [2.0, 2.0, -2.0, 1.0]])
R = np.array([[1.0, 0.0, 0.0, -1.0], [-0.4, 0.9, 0.3, 0.0], [0.5, 3.0, 0.5, 0.5]])
Y = np.array([0, 3, 1])


def np_softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def np_kl_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    out = []
    for a, b in zip(p_logits, q_logits, strict=True):
        p, q = np_softmax(a), np_softmax(b)
        out.append(sum(p[c] * math.log(p[c] / q[c]) for c in range(len(p))))
    return np.array(out)


def np_ce_mean(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([-math.log(np_softmax(row)[t]) for row, t in zip(logits, y, strict=True)]))


def reduce_np(v: np.ndarray, reduction: str) -> float:
    return float(v.sum() if reduction == "sum" else v.sum() / len(v))


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# kl_div


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_div_matches_numpy(reduction):
    got = kl_div(t(P), t(Q), reduction)
    assert got.shape == ()
    assert got.item() == pytest.approx(reduce_np(np_kl_rows(P, Q), reduction), rel=1e-5)


def test_kl_div_none_and_torch_kldivloss():
    per = kl_div(t(P), t(Q), "none")
    np.testing.assert_allclose(per.numpy(), np_kl_rows(P, Q), rtol=1e-5)
    # the official code's form: KLDivLoss(reduction="sum")(log_softmax(q), softmax(p)) == KL(p || q) summed
    ref = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(t(Q), dim=1), F.softmax(t(P), dim=1))
    assert kl_div(t(P), t(Q), "sum").item() == pytest.approx(ref.item(), rel=1e-5)
    assert kl_div(t(P), t(P), "sum").item() == pytest.approx(0.0, abs=1e-6)


def test_kl_div_is_stable_for_huge_logits():
    p = torch.tensor([[1000.0, 0.0]])
    q = torch.tensor([[0.0, 1000.0]])
    got = kl_div(p, q, "mean")
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(1000.0, rel=1e-4)  # p = (1, 0): KL = log p_0 - log q_0 = 0 - (-1000)


def test_kl_div_rejects_unknown_reduction():
    with pytest.raises(ZSBenchError):
        kl_div(t(P), t(Q), "batchmean")


# ---------------------------------------------------------------------------------------------------------------
# pmg_aft_loss: adv = P, clean = Q, frozen adv = R


@pytest.mark.parametrize("direction", ["current", "published"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pmg_aft_loss_kl_directions_and_reductions(direction, reduction):
    alpha, beta = 0.7, 1.3
    loss, terms = pmg_aft_loss(t(P), t(Q), t(R), torch.tensor(Y), alpha, beta, direction, reduction)
    if direction == "current":  # KL(p0(x') || p(x')), KL(p(x) || p(x'))
        robust, natural = np_kl_rows(R, P), np_kl_rows(Q, P)
    else:  # KL(p(x') || p0(x')), KL(p(x') || p(x))
        robust, natural = np_kl_rows(P, R), np_kl_rows(P, Q)
    ce = np_ce_mean(P, Y)
    r, n = reduce_np(robust, reduction), reduce_np(natural, reduction)
    assert set(terms) == {"ce", "robust", "natural"}
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["robust"].item() == pytest.approx(r, rel=1e-5)
    assert terms["natural"].item() == pytest.approx(n, rel=1e-5)
    assert loss.item() == pytest.approx(ce + alpha * r + beta * n, rel=1e-5)


def test_pmg_aft_loss_directions_differ():
    a, _ = pmg_aft_loss(t(P), t(Q), t(R), torch.tensor(Y), direction="current")
    b, _ = pmg_aft_loss(t(P), t(Q), t(R), torch.tensor(Y), direction="published")
    assert abs(a.item() - b.item()) > 1e-3


def test_pmg_aft_loss_beta_zero_drops_the_natural_term():
    y = torch.tensor(Y)
    loss, terms = pmg_aft_loss(t(P), t(Q), t(R), y, alpha=1.0, beta=0.0)
    assert loss.item() == pytest.approx(np_ce_mean(P, Y) + reduce_np(np_kl_rows(R, P), "mean"), rel=1e-5)
    # the clean logits no longer matter, and get no gradient
    adv, clean = t(P).requires_grad_(True), t(Q).requires_grad_(True)
    other, _ = pmg_aft_loss(adv, clean, t(R), y, alpha=1.0, beta=0.0)
    assert other.item() == pytest.approx(pmg_aft_loss(t(P), t(Q) * 5, t(R), y, beta=0.0)[0].item(), rel=1e-6)
    other.backward()
    assert clean.grad is None


def test_pmg_aft_loss_gradients_reach_both_kl_arguments():
    adv, clean = t(P).requires_grad_(True), t(Q).requires_grad_(True)
    loss, _ = pmg_aft_loss(adv, clean, t(R), torch.tensor(Y), direction="published")
    loss.backward()
    assert adv.grad.abs().sum() > 0 and clean.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("direction", ["current", "published"])
def test_pmg_aft_loss_l2_output(reduction, direction):
    loss, terms = pmg_aft_loss(t(P), t(Q), t(R), torch.tensor(Y), 2.0, 0.5, direction, reduction, distance="l2_output")
    sq = lambda a, b: np.array([np.sum((np_softmax(u) - np_softmax(v)) ** 2) for u, v in zip(a, b, strict=True)])  # noqa: E731
    r, n = reduce_np(sq(P, R), reduction), reduce_np(sq(P, Q), reduction)
    assert terms["robust"].item() == pytest.approx(r, rel=1e-5)
    assert terms["natural"].item() == pytest.approx(n, rel=1e-5)
    assert loss.item() == pytest.approx(np_ce_mean(P, Y) + 2.0 * r + 0.5 * n, rel=1e-5)


FA = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0], [-2.0, 1.0, 1.0]])  # f(x')
FC = np.array([[1.5, 1.0, -1.0], [0.0, 0.5, 2.0], [-1.0, -1.0, 2.0]])  # f(x)
F0 = np.array([[3.0, 0.0, 1.0], [0.5, 0.5, 3.5], [-2.0, 2.0, 0.0]])  # f0(x')


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("distance", ["l2_feature", "cosine_feature"])
def test_pmg_aft_loss_feature_distances(distance, reduction):
    feats = (t(FA), t(FC), t(F0))
    loss, terms = pmg_aft_loss(t(P), None, None, torch.tensor(Y), 1.0, 1.0, "current", reduction, distance, feats)
    if distance == "l2_feature":
        d = lambda a, b: np.array([sum((u[k] - v[k]) ** 2 for k in range(3)) for u, v in zip(a, b, strict=True)])  # noqa: E731
    else:
        d = lambda a, b: np.array([1 - u @ v / np.sqrt((u @ u) * (v @ v)) for u, v in zip(a, b, strict=True)])  # noqa: E731
    r, n = reduce_np(d(FA, F0), reduction), reduce_np(d(FA, FC), reduction)
    assert terms["robust"].item() == pytest.approx(r, rel=1e-5)
    assert terms["natural"].item() == pytest.approx(n, rel=1e-5)
    assert loss.item() == pytest.approx(np_ce_mean(P, Y) + r + n, rel=1e-5)
    published, _ = pmg_aft_loss(t(P), None, None, torch.tensor(Y), 1.0, 1.0, "published", reduction, distance, feats)
    assert published.item() == pytest.approx(loss.item(), rel=1e-6)  # symmetric distances


def test_pmg_aft_loss_errors_are_one_line():
    y = torch.tensor(Y)
    for kwargs in (
        {"distance": "l2_feature"},  # no feats
        {"distance": "wasserstein"},
        {"direction": "reverse"},
        {"reduction": "none"},
    ):
        with pytest.raises(ZSBenchError) as err:
            pmg_aft_loss(t(P), t(Q), t(R), y, **kwargs)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# fare_loss


def test_fare_loss_matches_numpy():
    per = np.array([sum((FA[i, k] - F0[i, k]) ** 2 for k in range(3)) for i in range(3)])
    np.testing.assert_allclose(fare_loss_per_sample(t(FA), t(F0)).numpy(), per, rtol=1e-6)
    assert fare_loss(t(FA), t(F0)).item() == pytest.approx(per.mean(), rel=1e-6)
    # unnormalized: scaling both embeddings scales the loss quadratically
    assert fare_loss(3 * t(FA), 3 * t(F0)).item() == pytest.approx(9 * per.mean(), rel=1e-5)
    with pytest.raises(ZSBenchError):
        fare_loss(t(FA), t(F0)[:, :2])


# ---------------------------------------------------------------------------------------------------------------
# methods on the tiny model


@pytest.fixture(scope="module")
def batch():
    train = DATASETS.get("synthetic").loader(None, "train")
    return train.images[:6].float().div(255), train.labels[:6].long()


def _classifiers(tiny, normalization="clip", tau=100.0):
    """(trained, frozen) classifiers on copies of the tiny tower; the trained one is nudged away from the frozen."""
    mean, std = NORMALIZATIONS[normalization]
    gen = torch.Generator().manual_seed(0)
    head = F.normalize(torch.randn(10, 32, generator=gen), dim=-1)
    enc, enc0 = copy.deepcopy(tiny.model.visual).cpu(), copy.deepcopy(tiny.model.visual).cpu()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    for p in enc.parameters():
        p.requires_grad_(True)
    for p in enc0.parameters():
        p.requires_grad_(False)
    model = ZeroShotClassifier(enc, head, tiny.image_size, mean, std, tau).train()
    frozen = ZeroShotClassifier(enc0, head, tiny.image_size, mean, std, tau).eval()
    return model, frozen


def fgsm(x: torch.Tensor, eps: float = 4 / 255):
    """A deterministic one-step attack with Step.attack's contract: gradients only into the perturbation."""

    def attack(loss_fn):
        delta = torch.zeros_like(x, requires_grad=True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta).sum(), delta)
        return (x + eps * grad.sign()).clamp(0, 1).detach()

    return attack


def _check_grads(model, frozen):
    grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in frozen.parameters())


def test_ft_standard_loss(tiny, batch):
    x, y = batch
    model, _ = _classifiers(tiny)

    def no_attack(loss_fn):
        raise AssertionError("ft_standard must not attack")

    method = FTStandard()
    loss, terms = method.loss(Step(x=x, y=y, model=model, frozen=None, attack=no_attack))
    assert loss.shape == () and torch.isfinite(loss) and set(terms) == {"ce"}
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float64)
    assert loss.item() == pytest.approx(np_ce_mean(logits, y.numpy()), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in model.visual.parameters())
    assert not FTStandard.needs_frozen and FTStandard.recipe.train_steps == 0


def test_tecoa_loss(tiny, batch):
    x, y = batch
    model, frozen = _classifiers(tiny)
    seen = []

    def attack(loss_fn):
        per_image = loss_fn(x)
        seen.append(per_image.shape)
        return fgsm(x)(loss_fn)

    loss, terms = TeCoA().loss(Step(x=x, y=y, model=model, frozen=frozen, attack=attack))
    assert seen == [torch.Size([len(x)])]  # one attack loss per image
    assert loss.shape == () and torch.isfinite(loss) and set(terms) == {"ce"}
    x_adv = fgsm(x)(lambda xa: F.cross_entropy(model(xa), y, reduction="none"))
    with torch.no_grad():
        logits_adv = model(x_adv).numpy().astype(np.float64)
    assert loss.item() == pytest.approx(np_ce_mean(logits_adv, y.numpy()), rel=1e-4)
    loss.backward()
    _check_grads(model, frozen)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kl_direction": "published", "kl_reduction": "sum"},
        {"beta": "0"},
        {"distance": "l2_output", "alpha": "0.5"},
        {"distance": "l2_feature"},
        {"distance": "cosine_feature", "kl_reduction": "sum"},
    ],
)
def test_pmg_aft_loss_on_tiny_model(tiny, batch, options):
    x, y = batch
    model, frozen = _classifiers(tiny, "imagenet", 1.0)
    cfg = PMGAFTConfig.from_overrides(options)
    loss, terms = PMGAFT(cfg).loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
    assert loss.shape == () and torch.isfinite(loss)
    assert set(terms) == {"ce", "robust", "natural"}
    # the same quantities computed here, then fed to pmg_aft_loss
    x_adv = fgsm(x)(lambda xa: F.cross_entropy(model(xa), y, reduction="none"))
    with torch.no_grad():
        lo_adv, lo_clean, lo0_adv = model(x_adv), model(x), frozen(x_adv)
        feats = (model.embed(x_adv), model.embed(x), frozen.embed(x_adv))
    expected, _ = pmg_aft_loss(
        lo_adv, lo_clean, lo0_adv, y, cfg.alpha, cfg.beta, cfg.kl_direction, cfg.kl_reduction, cfg.distance, feats
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["robust"].item() > 0  # the trained model differs from the frozen one
    loss.backward()
    _check_grads(model, frozen)


def test_pmg_aft_default_matches_paper_formula_on_tiny_model(tiny, batch):
    """Default config = CE + KL(p0(x')||p(x')) + KL(p(x)||p(x')), batch means, written out with numpy."""
    x, y = batch
    model, frozen = _classifiers(tiny, "imagenet", 1.0)
    loss, _ = PMGAFT().loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
    x_adv = fgsm(x)(lambda xa: F.cross_entropy(model(xa), y, reduction="none"))
    with torch.no_grad():
        a, c, a0 = (v.numpy().astype(np.float64) for v in (model(x_adv), model(x), frozen(x_adv)))
    expected = np_ce_mean(a, y.numpy()) + np_kl_rows(a0, a).mean() + np_kl_rows(c, a).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_fare_loss_on_tiny_model(tiny, batch):
    x, _ = batch
    model, frozen = _classifiers(tiny)
    loss, terms = FARE().loss(Step(x=x, y=None, model=model, frozen=frozen, attack=fgsm(x)))
    assert loss.shape == () and torch.isfinite(loss) and set(terms) == {"l2", "cos"}
    with torch.no_grad():
        target = frozen.embed(x)
    x_adv = fgsm(x)(lambda xa: ((model.embed(xa) - target) ** 2).sum(dim=1))
    with torch.no_grad():
        emb = model.embed(x_adv).numpy().astype(np.float64)
    tgt = target.numpy().astype(np.float64)
    expected = np.mean([np.dot(emb[i] - tgt[i], emb[i] - tgt[i]) for i in range(len(x))])
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # the attack increased the distance over the clean image
    with torch.no_grad():
        clean = ((model.embed(x) - target) ** 2).sum(dim=1).mean().item()
    assert loss.item() > clean
    loss.backward()
    _check_grads(model, frozen)


# ---------------------------------------------------------------------------------------------------------------
# configs and registry


@pytest.mark.parametrize(
    "overrides",
    [
        {"kl_direction": "backwards"},
        {"kl_reduction": "batchmean"},
        {"distance": "l1"},
        {"alpha": "-1"},
        {"beta": "nan"},
        {"alpha": "one"},
        {"gamma": "1"},
    ],
)
def test_pmg_aft_config_errors_are_one_line(overrides):
    with pytest.raises(ZSBenchError) as err:
        PMGAFTConfig.from_overrides(overrides)
    assert "\n" not in str(err.value)


def test_pmg_aft_config_defaults_and_overrides():
    cfg = PMGAFTConfig()
    assert (cfg.alpha, cfg.beta, cfg.kl_direction, cfg.kl_reduction, cfg.distance) == (
        1.0,
        1.0,
        "current",
        "mean",
        "kl",
    )
    official = PMGAFTConfig.from_overrides({"kl_direction": "published", "kl_reduction": "sum", "alpha": "0.5"})
    assert (official.kl_direction, official.kl_reduction, official.alpha) == ("published", "sum", 0.5)
    with pytest.raises(ZSBenchError):
        PMGAFT(PMGAFTConfig(distance="kl_sym"))


def test_registry_and_recipes():
    assert METHODS.get("pmg_aft") is PMGAFT
    assert METHODS.get("tecoa") is TeCoA and METHODS.get("ft_standard") is FTStandard and METHODS.get("fare") is FARE
    # the head knobs are the training profile's, not the method's (profiles.TRAIN_PROFILES)
    assert PMGAFT.needs_frozen and PMGAFT.official_options == {"kl_direction": "published", "kl_reduction": "sum"}
    r = TeCoA.recipe
    assert (r.lr, r.train_eps_255, r.train_steps, r.batch_size, r.train_attack) == (5e-5, 1.0, 2, 256, "pgd")
    assert not hasattr(r, "normalization") and not hasattr(r, "logit_scale")
    f = FARE.recipe
    assert (f.optimizer, f.lr, f.weight_decay, f.train_steps, f.train_eps_255, f.warmup_steps) == (
        "adamw",
        1e-5,
        1e-4,
        10,
        4.0,
        1400,
    )
    assert not FARE.needs_labels and not FARE.needs_text_head and FARE.needs_frozen
    assert f.train_attack == "pgd_momentum" and FARE.train_attack_mode == "eval"
