"""TGA-ZSR (``tga_zsr``): attention maps, the loss, the training engine, the official checkpoint layout.

Reference values are computed independently where it matters: the attention maps with numpy loops from the tokens
open_clip's own forward returns (``output_tokens``), the loss from those maps and a numpy L2 norm.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustbench_zs.methods.tecoa  # noqa: F401  (registration)
import robustbench_zs.methods.tga_zsr  # noqa: F401
from robustbench_zs.datasets import DATASETS, synthetic
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import METHODS, Step
from robustbench_zs.methods.tecoa import TeCoA
from robustbench_zs.methods.tga_zsr import (
    TGAZSR,
    TGAZSRConfig,
    classifier_tokens,
    logits_and_attention,
    map_distance,
    text_guided_attention,
)
from robustbench_zs.models import NORMALIZATIONS, ModelSpec, ZeroShotClassifier, load_model
from robustbench_zs.train.engine import make_attack

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)


@pytest.fixture(scope="module")
def batch():
    train = DATASETS.get("synthetic").loader(None, "train")
    return train.images[:6].float().div(255), train.labels[:6].long()


def _classifiers(tiny, nudge: float = 0.02, frozen_grads: bool = False):
    """(trained, frozen) classifiers on copies of the tiny tower; the trained one is nudged away from the frozen.

    ``frozen_grads``: leave the frozen copy's parameters requiring gradients (the official code's frozen model
    does), so that a test can see whether the loss lets any reach them.
    """
    mean, std = NORMALIZATIONS["clip"]
    gen = torch.Generator().manual_seed(0)
    head = F.normalize(torch.randn(10, 32, generator=gen), dim=-1)
    enc, enc0 = copy.deepcopy(tiny.model.visual).cpu(), copy.deepcopy(tiny.model.visual).cpu()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(nudge * torch.randn(p.shape, generator=gen))
    for p in enc.parameters():
        p.requires_grad_(True)
    for p in enc0.parameters():
        p.requires_grad_(frozen_grads)
    model = ZeroShotClassifier(enc, head, tiny.image_size, mean, std, 100.0).train()
    frozen = ZeroShotClassifier(enc0, head, tiny.image_size, mean, std, 100.0).eval()
    return model, frozen


def fgsm(x: torch.Tensor, eps: float = 4 / 255):
    """A deterministic one-step attack with Step.attack's contract: gradients only into the perturbation."""

    def attack(loss_fn):
        delta = torch.zeros_like(x, requires_grad=True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta).sum(), delta)
        return (x + eps * grad.sign()).clamp(0, 1).detach()

    return attack


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.visual.parameters()])


# --- attention maps ------------------------------------------------------------------------------------------------


def _reference_map(clf, x, y, token_norm: str) -> np.ndarray:
    """The attention map on the patch grid (no upsampling), from open_clip's own forward, with numpy loops."""
    visual = copy.deepcopy(clf.visual)
    visual.output_tokens = True  # open_clip returns (pooled @ proj, ln_post(patch tokens)) then
    with torch.no_grad():
        pooled, patches = visual(clf.preprocess(x))
        tokens = torch.cat([pooled[:, None], patches @ visual.proj], dim=1).double().numpy()
    text = clf.head[y].double().numpy()
    out = []
    for b in range(len(x)):
        t = tokens[b]
        if token_norm == "official":
            t = t / np.sqrt((t**2).sum(axis=0, keepdims=True))  # over the tokens, per dimension
        else:
            t = t / np.sqrt((t**2).sum(axis=1, keepdims=True))
        s = np.array([sum(t[p, d] * text[b, d] for d in range(t.shape[1])) for p in range(1, len(t))])
        out.append((s - s.min()) / (s.max() - s.min()))
    return np.stack(out)


@pytest.mark.parametrize("token_norm", ["official", "per_token"])
def test_attention_map_matches_a_reference_on_the_patch_grid(tiny, batch, token_norm):
    x, y = batch
    model, _ = _classifiers(tiny)
    tokens = classifier_tokens(model, x)
    grid = (tiny.image_size[0] // 8, tiny.image_size[1] // 8)  # the tiny ViT: 32 px, patches of 8
    assert tokens.shape == (len(x), 1 + grid[0] * grid[1], 32)
    got = text_guided_attention(tokens, model.head[y], grid, token_norm)  # upsampling to the grid is the identity
    np.testing.assert_allclose(got.detach().double().numpy(), _reference_map(model, x, y, token_norm), atol=1e-5)


def test_logits_and_attention_from_one_forward(tiny, batch):
    x, y = batch
    model, _ = _classifiers(tiny)
    logits, maps = logits_and_attention(model, x, y)
    maps = maps.detach()
    h, w = tiny.image_size
    assert logits.shape == (len(x), 10) and maps.shape == (len(x), h * w)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)  # the class token gives the logits
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 and torch.isfinite(maps).all()
    # bilinear upsampling of values in [0, 1] spans nearly all of it: min-max put 0 and 1 on two patches
    assert float(maps.max()) > 0.8 and float(maps.min()) < 0.2
    # the maps depend on the class text
    other = logits_and_attention(model, x, (y + 1) % 10)[1]
    assert not torch.allclose(maps, other)


def test_flat_scores_give_a_zero_map_not_nan():
    tokens = torch.ones(2, 5, 8)  # every patch token the same: max == min
    maps = text_guided_attention(tokens, F.normalize(torch.ones(2, 8), dim=-1), (4, 4))
    assert maps.shape == (2, 16) and torch.equal(maps, torch.zeros(2, 16))


def test_map_distances_match_numpy():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 20, generator=gen), torch.rand(3, 20, generator=gen)
    an, bn = a.double().numpy(), b.double().numpy()
    l2 = np.mean([math.sqrt(sum((an[i, j] - bn[i, j]) ** 2 for j in range(20))) for i in range(3)])
    l1 = np.mean(np.abs(an - bn))
    cos = np.mean([1 - an[i] @ bn[i] / (np.linalg.norm(an[i]) * np.linalg.norm(bn[i])) for i in range(3)])
    assert map_distance(a, b, "l2").item() == pytest.approx(l2, rel=1e-5)  # a norm, not its square
    assert map_distance(a, b, "l1").item() == pytest.approx(l1, rel=1e-5)
    assert map_distance(a, b, "cos").item() == pytest.approx(cos, rel=1e-5)
    with pytest.raises(ZSBenchError):
        map_distance(a, b[:, :5], "l2")


# --- the loss ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"distance": "l1"}, {"distance": "cos", "token_norm": "per_token"}])
def test_loss_is_ce_plus_the_two_map_terms(tiny, batch, options):
    x, y = batch
    model, frozen = _classifiers(tiny)
    cfg = TGAZSRConfig.from_overrides(options)
    loss, terms = TGAZSR(cfg).loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
    assert loss.shape == () and torch.isfinite(loss) and set(terms) == {"ce", "am1", "am2"}
    assert all(torch.isfinite(v) for v in terms.values())
    # the same quantities computed here, with separate forwards
    x_adv = fgsm(x)(lambda xa: F.cross_entropy(model(xa), y, reduction="none"))
    with torch.no_grad():
        ce = F.cross_entropy(model(x_adv), y)
        adv = logits_and_attention(model, x_adv, y, cfg.token_norm)[1]
        clean = logits_and_attention(model, x, y, cfg.token_norm)[1]
        target = logits_and_attention(frozen, x, y, cfg.token_norm)[1]
    am1, am2 = map_distance(adv, target, cfg.distance), map_distance(clean, target, cfg.distance)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["am1"].item() == pytest.approx(am1.item(), rel=1e-4) and am1 > 0
    assert terms["am2"].item() == pytest.approx(am2.item(), rel=1e-4) and am2 > 0
    assert loss.item() == pytest.approx((ce + 0.08 * am1 + 0.05 * am2).item(), rel=1e-5)


def test_l2_terms_written_out_with_numpy(tiny, batch):
    x, y = batch
    model, frozen = _classifiers(tiny)
    _, terms = TGAZSR().loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
    with torch.no_grad():
        clean = logits_and_attention(model, x, y)[1].double().numpy()
        target = logits_and_attention(frozen, x, y)[1].double().numpy()
    per_image = [math.sqrt(float(((clean[i] - target[i]) ** 2).sum())) for i in range(len(x))]
    assert terms["am2"].item() == pytest.approx(float(np.mean(per_image)), rel=1e-4)


def test_alpha_beta_zero_is_tecoa_on_the_same_batch_and_seed(tiny, batch):
    x, y = batch
    model, frozen = _classifiers(tiny)
    seeds = torch.arange(len(x))

    def step():
        return Step(x=x, y=y, model=model, frozen=frozen, attack=make_attack(model, x, seeds, TGAZSR.recipe, "fp32"))

    want, _ = TeCoA().loss(step())
    got, terms = TGAZSR(TGAZSRConfig(alpha=0.0, beta=0.0)).loss(step())
    assert set(terms) == {"ce"} and got.item() == pytest.approx(want.item(), rel=1e-6)
    full, full_terms = TGAZSR().loss(step())
    assert full_terms["ce"].item() == pytest.approx(want.item(), rel=1e-5) and full.item() > want.item()


def test_the_frozen_map_gets_no_gradient(tiny, batch):
    x, y = batch
    model, frozen = _classifiers(tiny, frozen_grads=True)
    loss, _ = TGAZSR().loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
    loss.backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert torch.isfinite(_grads(model)).all() and _grads(model).abs().sum() > 0


@pytest.mark.parametrize("term", ["alpha", "beta"])
def test_gradients_reach_the_encoder_through_each_map_term(tiny, batch, term):
    x, y = batch
    model, frozen = _classifiers(tiny)
    grads = {}
    for weight in (0.0, 1.0):
        model.zero_grad(set_to_none=True)
        cfg = TGAZSRConfig(**{"alpha": 0.0, "beta": 0.0, term: weight})
        loss, terms = TGAZSR(cfg).loss(Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x)))
        loss.backward()
        grads[weight] = _grads(model)
    assert set(terms) == {"ce", "am1" if term == "alpha" else "am2"}
    diff = (grads[1.0] - grads[0.0]).abs().sum()
    assert torch.isfinite(diff) and diff > 1e-3 * grads[0.0].abs().sum()


def test_first_step_with_the_model_equal_to_the_frozen_one_is_finite(tiny, batch):
    """At step 0 the clean maps are equal up to rounding (the frozen copy runs in eval mode without gradients, where
    attention takes another kernel), so the L2 term is the norm of (nearly) zero: its gradient must stay finite."""
    x, y = batch
    model, frozen = _classifiers(tiny, nudge=0.0)
    step = Step(x=x, y=y, model=model, frozen=frozen, attack=fgsm(x), joint_forward=False)
    loss, terms = TGAZSR().loss(step)
    assert terms["am2"].item() < 1e-4 and terms["am1"].item() > 100 * terms["am2"].item()
    loss.backward()
    assert torch.isfinite(_grads(model)).all()
    # exactly equal maps: finite gradients (the L2 norm of zero has the gradient 0, not NaN)
    a = torch.rand(2, 16, requires_grad=True)
    for distance in ("l2", "l1", "cos"):
        (grad,) = torch.autograd.grad(map_distance(a, a.detach(), distance), a)
        assert torch.isfinite(grad).all(), distance


# --- config, registry, models --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"alpha": "-1"},
        {"beta": "-0.5"},
        {"alpha": "nan"},
        {"beta": "inf"},
        {"alpha": "one"},
        {"distance": "l3"},
        {"distance": ""},
        {"token_norm": "per_patch"},
        {"gamma": "1"},
    ],
)
def test_hostile_options_are_refused_in_one_line(overrides):
    with pytest.raises(ZSBenchError) as err:
        TGAZSRConfig.from_overrides(overrides)
    assert "\n" not in str(err.value)


def test_hostile_config_objects_are_refused():
    for bad in (TGAZSRConfig(alpha=float("nan")), TGAZSRConfig(beta=True), TGAZSRConfig(distance=None)):
        with pytest.raises(ZSBenchError):
            TGAZSR(bad)


def test_registry_defaults_and_recipe():
    assert METHODS.get("tga_zsr") is TGAZSR
    cfg = TGAZSRConfig()
    assert (cfg.alpha, cfg.beta, cfg.distance, cfg.token_norm) == (0.08, 0.05, "l2", "official")
    assert TGAZSR.official_options == {}  # the defaults are the official code's
    assert TGAZSR.needs_frozen and TGAZSR.needs_labels and TGAZSR.needs_text_head and TGAZSR.trains == "image_encoder"
    r = TGAZSR.recipe
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.warmup_steps, r.epochs, r.batch_size) == (
        "sgd",
        1e-4,
        0.9,
        0.0,
        1000,
        10,
        128,
    )
    assert (r.train_eps_255, r.train_steps, r.train_step_size_255, r.train_attack) == (1.0, 2, 1.0, "pgd")


def test_a_resnet_tower_is_refused_in_one_line(tiny):
    rn = load_model(ModelSpec("zsbench-tiny-rn", "random", init_seed=0))
    with pytest.raises(ZSBenchError, match="needs an open_clip ViT") as err:
        TGAZSR().check_model(rn.model, "zsbench-tiny-rn")
    assert "ModifiedResNet" in str(err.value) and "\n" not in str(err.value)
    TGAZSR().check_model(tiny.model, "zsbench-tiny")  # the tiny ViT passes


def test_a_vit_pooling_otherwise_is_refused(tiny):
    visual = copy.deepcopy(tiny.model.visual)
    visual.pool_type = "avg"
    with pytest.raises(ZSBenchError, match="not by the class token"):
        TGAZSR().check_model(visual, "custom")


# --- the engine ----------------------------------------------------------------------------------------------------


def test_a_short_training_run_writes_a_checkpoint_that_evaluates(tmp_path, monkeypatch):
    from robustbench_zs.engine.variants import resolve_variants
    from robustbench_zs.train import TrainConfig, train
    from robustbench_zs.weights import load_checkpoint

    monkeypatch.setitem(synthetic.SIZES, "train", 64)
    cfg = TrainConfig(
        method="tga_zsr",
        model=TINY,
        train_dataset="synthetic",
        data_root=tmp_path,
        out_dir=tmp_path / "models",
        recipe={"batch_size": 32, "epochs": 2, "warmup_steps": 1, "lr": 1e-2},
        max_steps=3,
        device="cpu",
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    res = train(cfg, echo=lambda s: None)
    assert res.steps == 3 and len(res.losses) == 3 and all(np.isfinite(res.losses))
    tensors, meta = load_checkpoint(res.folder)
    assert meta["method"] == "tga_zsr" and meta["steps"] == 3 and not meta["complete"]
    assert meta["config"] == {"alpha": 0.08, "beta": 0.05, "distance": "l2", "token_norm": "official"}
    assert meta["recipe"]["lr"] == 1e-2 and meta["recipe"]["batch_size"] == 32
    assert set(tensors) == set(load_model(TINY).model.visual.state_dict())
    done = train(dataclasses.replace(cfg, max_steps=None), echo=lambda s: None)
    assert done.steps == 4 and done.resumed_from == 3
    (variant,) = resolve_variants(("tga_zsr",), TINY, {}, {"tga_zsr": done.folder}, tmp_path, None)
    _, encoder = variant.load(torch.device("cpu"))
    final, _ = load_checkpoint(done.folder)
    assert all(torch.equal(encoder.state_dict()[k], final[k]) for k in final)


def test_an_official_tga_zsr_file_loads_as_tga_zsr(tmp_path, tiny):
    """TGA-ZSR.py's save_checkpoint layout: vision_encoder_state_dict (model.visual's keys, no prefix) beside the
    prompter states, best_acc1 and the optimizer's state."""
    from robustbench_zs.engine.variants import resolve_variants

    source = load_model(ModelSpec("zsbench-tiny", "random", init_seed=5)).model.visual
    visual_sd = {k: v.detach().clone() for k, v in source.state_dict().items()}
    opt = torch.optim.SGD(source.parameters(), lr=1e-4, momentum=0.9)
    sum(p.sum() for p in source.parameters()).backward()
    opt.step()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {
            "epoch": 10,
            "state_dict": {},
            "add_prompter": {},
            "best_acc1": 0.0,
            "optimizer": opt.state_dict(),
            "vision_encoder_state_dict": visual_sd,
        },
        path,
    )
    (variant,) = resolve_variants(("tga_zsr",), TINY, {}, {"tga_zsr": path}, tmp_path / "models", None)
    assert variant.label == "tga_zsr" and variant.identity["checkpoint"].startswith("sha256:")
    _, encoder = variant.load(torch.device("cpu"))
    got = encoder.state_dict()
    assert set(got) == set(visual_sd) and all(torch.equal(got[k], visual_sd[k]) for k in visual_sd)
    assert not torch.equal(got["proj"], tiny.model.visual.state_dict()["proj"])  # not the base weights
