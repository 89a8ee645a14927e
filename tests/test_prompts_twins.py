"""Visual prompts (vp_tecoa, vp_pmg_aft) and TWINS on the tiny random-weight models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import robustbench_zs.methods.twins  # noqa: F401  (registration)
import robustbench_zs.methods.visual_prompts  # noqa: F401  (registration)
from robustbench_zs.datasets import DATASETS
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import METHODS, Step
from robustbench_zs.methods.pmg_aft import PMGAFT, PMGAFTConfig
from robustbench_zs.methods.tecoa import TeCoA
from robustbench_zs.methods.twins import TWINS, TwinBatchNorm2d, TwinsConfig, twin_mode
from robustbench_zs.methods.visual_prompts import (
    VPPMGAFT,
    PromptedViT,
    VisualPromptConfig,
    VPPMGAFTConfig,
    VPTeCoA,
    scaled_pad,
)
from robustbench_zs.models import NORMALIZATIONS, ModelSpec, ZeroShotClassifier, load_model

VIT = ModelSpec("zsbench-tiny", "random", init_seed=0)
RN = ModelSpec("zsbench-tiny-rn", "random", init_seed=0)
MEAN, STD = NORMALIZATIONS["clip"]


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh(spec: ModelSpec):
    """A new model each time: the methods freeze or rewrite the image tower in place."""
    return load_model(spec)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


def classifier(encoder, head, scale: float = 100.0) -> ZeroShotClassifier:
    return ZeroShotClassifier(encoder, head, (32, 32), MEAN, STD, scale)


def random_head(n_classes: int = 10, dim: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)


def np_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    z = logits.detach().double().numpy()
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), y.numpy()].mean())


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --- PromptedViT ---------------------------------------------------------------------------------------------------
def test_scaled_pad():
    assert scaled_pad(30, 224) == 30
    assert scaled_pad(30, 32) == 4  # round(4.29)
    assert scaled_pad(1, 32) == 1  # at least one pixel
    assert scaled_pad(0, 32) == 0


def test_prompted_vit_zero_prompts_no_tokens_is_the_vit_exactly():
    vit = fresh(VIT).model.visual
    x = (images(4) - 0.5) / 0.25
    with torch.no_grad():
        ref = vit(x)
        wrapped = PromptedViT(vit, pad=30, n_tokens=0, prompt_init="randn")
        wrapped.pad_prompt.zero_()
        out = wrapped(x)
    assert torch.equal(out, ref)
    with torch.no_grad():
        zeros = PromptedViT(vit, pad=30, n_tokens=0, prompt_init="zeros")(x)
    assert torch.equal(zeros, ref)


def test_padding_prompt_is_added_on_the_border_only():
    vit = fresh(VIT).model.visual
    wrapped = PromptedViT(vit, pad=30, n_tokens=0)  # 4 px at 32 px
    p = wrapped.pad_prompt.detach().clone()
    interior = p[:, 4:-4, 4:-4]
    assert torch.count_nonzero(interior) == 0 and torch.count_nonzero(p[:, :4]) == 3 * 4 * 32
    # the border, built independently: top/bottom rows, then left/right columns
    border = torch.zeros(3, 32, 32)
    border[:, :4, :], border[:, 28:, :] = p[:, :4, :], p[:, 28:, :]
    border[:, :, :4], border[:, :, 28:] = p[:, :, :4], p[:, :, 28:]
    x = images(3)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), vit(x + border), atol=1e-6)


def manual_prompted_forward(vit, x, tokens, pos):
    """The prompted ViT written out independently (patches by unfold, blocks one by one, class-token pooling)."""
    b = x.shape[0]
    ps = vit.conv1.kernel_size[0]
    patches = F.unfold(x, kernel_size=ps, stride=ps).transpose(1, 2)  # (B, L, 3*ps*ps)
    emb = patches @ vit.conv1.weight.reshape(vit.conv1.out_channels, -1).T
    cls = vit.class_embedding.expand(b, 1, -1)
    seq = torch.cat([cls, emb], 1) + vit.positional_embedding
    seq = torch.cat([seq, (tokens + pos).expand(b, -1, -1)], 1)
    seq = vit.ln_pre(seq)
    for block in vit.transformer.resblocks:
        seq = block(seq)
    return vit.ln_post(seq[:, 0]) @ vit.proj


def test_prompt_tokens_forward_matches_manual_computation():
    vit = fresh(VIT).model.visual
    assert vit.transformer.batch_first
    wrapped = PromptedViT(vit, pad=0, n_tokens=5)
    with torch.no_grad():
        wrapped.prompt_pos_embedding.normal_()
    x = images(3)
    with torch.no_grad():
        expected = manual_prompted_forward(vit, x, wrapped.prompt_tokens, wrapped.prompt_pos_embedding)
        out = wrapped(x)
        plain = vit(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)  # the tokens take part in attention
    assert wrapped.prompt_tokens.shape == (5, 64) and wrapped.n_tokens == 5


def test_prompted_vit_refuses_non_vit_and_keeps_backbone_in_eval():
    with pytest.raises(ZSBenchError) as err:
        PromptedViT(fresh(RN).model.visual)
    assert "ModifiedResNet" in one_line(err)
    wrapped = PromptedViT(fresh(VIT).model.visual, n_tokens=2)
    wrapped.train()
    assert wrapped.training and not wrapped.vit.training


# --- vp_tecoa / vp_pmg_aft --------------------------------------------------------------------------------------------
def test_vp_methods_registered_with_prompt_recipe():
    assert METHODS.get("vp_tecoa") is VPTeCoA and METHODS.get("vp_pmg_aft") is VPPMGAFT
    assert issubclass(VPTeCoA, TeCoA) and issubclass(VPPMGAFT, PMGAFT)
    assert VPTeCoA.trains == VPPMGAFT.trains == "prompts"
    for cls, parent in ((VPTeCoA, TeCoA), (VPPMGAFT, PMGAFT)):
        assert cls.recipe.lr == 40.0 and cls.recipe.optimizer == "sgd"
        assert {**cls.recipe.to_dict(), "lr": parent.recipe.lr} == parent.recipe.to_dict()
    assert VPPMGAFT.needs_frozen
    cfg = VPPMGAFTConfig()
    assert isinstance(cfg, PMGAFTConfig) and (cfg.alpha, cfg.beta, cfg.pad, cfg.n_tokens) == (1.0, 1.0, 30, 100)
    assert VisualPromptConfig.from_overrides({"pad": "0", "n_tokens": "7"}).n_tokens == 7
    for bad in ({"pad": "0", "n_tokens": "0"}, {"n_tokens": "-1"}, {"prompt_init": "ones"}, {"pad": "112"}):
        with pytest.raises(ZSBenchError) as err:
            VisualPromptConfig.from_overrides(bad)
        one_line(err)
    with pytest.raises(ZSBenchError):
        VPPMGAFTConfig.from_overrides({"alpha": "-1"})


def test_vp_check_model_refuses_resnet_in_one_line():
    rn = fresh(RN).model
    for method in (VPTeCoA(), VPPMGAFT()):
        with pytest.raises(ZSBenchError) as err:
            method.check_model(rn, "zsbench-tiny-rn")
        assert "zsbench-tiny-rn" in one_line(err) and method.id in str(err.value)
    VPTeCoA().check_model(fresh(VIT).model, "zsbench-tiny")


def test_vp_only_prompts_get_gradients():
    model = fresh(VIT).model
    method = VPTeCoA()
    encoder = method.build_encoder(model)
    trainable = method.trainable_parameters(encoder)
    names = {n for n, p in encoder.named_parameters() if any(p is t for t in trainable)}
    # the official optimizer: SGD(prompter.parameters() + add_prompter.parameters()); the tokens' positional embedding
    # lives in the frozen backbone and is never trained
    assert names == {"pad_prompt", "prompt_tokens"}
    assert not encoder.prompt_pos_embedding.requires_grad and not encoder.prompt_pos_embedding.any()
    clf = classifier(encoder, random_head())
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    loss, terms = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x))
    loss.backward()
    for name, p in model.visual.named_parameters():
        assert p.grad is None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_vp_tecoa_loss_matches_numpy_cross_entropy():
    model = fresh(VIT).model
    method = VPTeCoA(VisualPromptConfig(n_tokens=3))
    clf = classifier(method.build_encoder(model), random_head())
    x, y = images(6), torch.tensor([0, 1, 2, 3, 4, 5])
    x_adv = (x + 0.01).clamp(0, 1)
    loss, _ = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x_adv))
    assert loss.item() == pytest.approx(np_cross_entropy(clf(x_adv), y), rel=1e-5)


def test_vp_trained_state_holds_only_prompts_and_round_trips(tmp_path):
    for cls in (VPTeCoA, VPPMGAFT):
        method = cls(cls.Config(n_tokens=4))
        encoder = method.build_encoder(fresh(VIT).model)
        state = method.trained_state(encoder)
        assert set(state) == {"pad_prompt", "prompt_tokens"}
        assert state["pad_prompt"].shape == (3, 32, 32) and state["prompt_tokens"].shape == (4, 64)
        save_file(state, str(tmp_path / f"{cls.id}.safetensors"))
        loaded = load_file(str(tmp_path / f"{cls.id}.safetensors"))

        torch.manual_seed(123)  # another random init: the load must overwrite it
        other = method.build_encoder(fresh(VIT).model)
        x = (images(3) - 0.5) / 0.25
        with torch.no_grad():
            assert not torch.allclose(other(x), encoder(x))
            method.load_trained_state(other, loaded)
            assert torch.equal(other(x), encoder(x))

        with pytest.raises(ZSBenchError) as err:
            method.load_trained_state(other, {k: v for k, v in loaded.items() if k != "prompt_tokens"})
        assert "prompt_tokens" in one_line(err)
        with pytest.raises(ZSBenchError) as err:
            method.load_trained_state(other, {**loaded, "prompt_tokens": torch.zeros(5, 64)})
        assert "shape" in one_line(err)
        with pytest.raises(ZSBenchError):
            method.load_trained_state(other, {**loaded, "vit.proj": torch.zeros(64, 32)})


def test_vp_pmg_aft_loss_runs_with_unprompted_frozen_branch():
    loaded = fresh(VIT)
    frozen_visual = copy.deepcopy(loaded.model.visual).eval()
    method = VPPMGAFT(VPPMGAFTConfig(n_tokens=3))
    head = random_head()
    clf = classifier(method.build_encoder(loaded.model), head, scale=1.0)
    frozen = classifier(frozen_visual, head, scale=1.0).requires_grad_(False)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    x_adv = (x - 0.01).clamp(0, 1)
    loss, terms = method.loss(Step(x=x, y=y, model=clf, frozen=frozen, attack=lambda fn: x_adv))
    # independent: CE + KL(p0(x') || p(x')) + KL(p(x) || p(x')), batch means, in numpy
    za, zc, z0 = (t.detach().double().numpy() for t in (clf(x_adv), clf(x), frozen(x_adv)))

    def logsm(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    la, lc, l0 = logsm(za), logsm(zc), logsm(z0)
    ce = -la[np.arange(4), y.numpy()].mean()
    kl = lambda lp, lq: (np.exp(lp) * (lp - lq)).sum(1).mean()  # noqa: E731
    assert loss.item() == pytest.approx(ce + kl(l0, la) + kl(lc, la), rel=1e-4)
    loss.backward()
    assert all(p.grad is None for p in loaded.model.visual.parameters())
    assert all(p.grad is None for p in frozen.parameters())


def test_vp_tecoa_sgd_steps_lower_the_loss():
    model = fresh(VIT).model
    data = DATASETS.get("synthetic").loader(None, "train")
    x = data.images[:64].float().div(255)
    y = torch.as_tensor(data.labels[:64]).long()
    # a head the plain tower can read (class means of its features), so the prompts have something to improve
    probe = classifier(model.visual, torch.zeros(10, 32))
    with torch.no_grad():
        feats = probe.features(x)
    head = F.normalize(torch.stack([feats[y == c].mean(0) for c in range(10)]), dim=-1)
    method = VPTeCoA(VisualPromptConfig(n_tokens=10))
    encoder = method.build_encoder(model)
    clf = classifier(encoder, head, scale=100.0).train()
    opt = torch.optim.SGD(method.trainable_parameters(encoder), lr=VPTeCoA.recipe.lr, momentum=0.9)  # lr 40
    losses = []
    for _ in range(8):
        loss, _ = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = np_cross_entropy(clf(x), y)
    assert final < losses[0] - 0.2, (losses, final)


# --- TWINS --------------------------------------------------------------------------------------------------------
def test_twins_refuses_vit_in_one_line():
    assert METHODS.get("twins") is TWINS
    with pytest.raises(ZSBenchError) as err:
        TWINS().check_model(fresh(VIT).model, "zsbench-tiny")
    assert one_line(err) == "twins needs a backbone with BatchNorm layers (e.g. --arch RN50); zsbench-tiny has none"
    with pytest.raises(ZSBenchError):
        TWINS().build_encoder(fresh(VIT).model)
    for bad in ({"gamma": "-1"}, {"batch": "half"}, {"eval_wing": "both"}):
        with pytest.raises(ZSBenchError):
            TwinsConfig.from_overrides(bad)


def test_twins_build_replaces_every_batchnorm_and_starts_as_the_original():
    model = fresh(RN).model
    original = copy.deepcopy(model.visual).eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in original.modules())
    method = TWINS()
    method.check_model(model, "zsbench-tiny-rn")
    encoder = method.build_encoder(model)
    twins = [m for m in encoder.modules() if isinstance(m, TwinBatchNorm2d)]
    assert len(twins) == n_bn == 19
    assert all(t.mode == "adaptive" for t in twins)
    assert (
        method.build_encoder(model) is encoder
        and len([m for m in encoder.modules() if isinstance(m, TwinBatchNorm2d)]) == 19
    )
    x = (images(4) - 0.5) / 0.25
    encoder.eval()
    with torch.no_grad():
        ref = original(x)
        assert torch.equal(encoder(x), ref)
        with twin_mode(encoder, "frozen"):
            assert torch.allclose(encoder(x), ref, atol=1e-6)
    # every encoder parameter is trainable, both wings' affine parameters included
    names = {n for n, _ in encoder.named_parameters()}
    assert "bn1.adaptive.weight" in names and "bn1.frozen.weight" in names and "conv1.weight" in names
    assert len(method.trainable_parameters(encoder)) == len(names)


def twins_reference_loss(original, head, x_adv, y, gamma, batch):
    """The TWINS loss from two plain copies of the pre-trained tower: eval mode (pre-trained statistics) for the
    frozen wing, train mode (batch statistics) for the adaptive wing; cross-entropy in numpy."""
    frozen_net = classifier(copy.deepcopy(original).eval(), head)
    adaptive_net = classifier(copy.deepcopy(original).train(), head)
    with torch.no_grad():
        if batch == "split":
            h = len(y) // 2
            return gamma * np_cross_entropy(frozen_net(x_adv[:h]), y[:h]) + np_cross_entropy(
                adaptive_net(x_adv[h:]), y[h:]
            )
        return gamma * np_cross_entropy(frozen_net(x_adv), y) + np_cross_entropy(adaptive_net(x_adv), y)


@pytest.mark.parametrize("batch", ["split", "full"])
def test_twins_loss_matches_two_plain_networks(batch):
    model = fresh(RN).model
    original = copy.deepcopy(model.visual)
    method = TWINS(TwinsConfig(gamma=0.4, batch=batch))
    head = random_head()
    clf = classifier(method.build_encoder(model), head).train()
    x, y = images(8), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    x_adv = (x + 0.02).clamp(0, 1)
    seen_modes = []

    def attack(fn):
        seen_modes.extend({m.mode for m in clf.modules() if isinstance(m, TwinBatchNorm2d)})
        return x_adv

    loss, terms = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=attack))
    assert seen_modes == ["adaptive"]  # the attack targets the adaptive wing
    assert torch.isfinite(loss)
    expected = twins_reference_loss(original, head, x_adv, y, 0.4, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert loss.item() == pytest.approx(0.4 * terms["ce_frozen"].item() + terms["ce_adaptive"].item(), rel=1e-6)
    assert all(m.mode == "adaptive" for m in clf.modules() if isinstance(m, TwinBatchNorm2d))


def test_twins_wings_statistics_and_gradients():
    model = fresh(RN).model
    method = TWINS()
    encoder = method.build_encoder(model)
    clf = classifier(encoder, random_head()).train()
    twin = encoder.bn1  # the stem's first BatchNorm (blocks' residual branches start at zero: bn3.weight = 0)
    pre_mean = twin.adaptive.running_mean.clone()
    x, y = images(8), torch.arange(8)
    loss, _ = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x))
    loss.backward()
    assert not torch.allclose(twin.adaptive.running_mean, pre_mean)  # adaptive wing: batch statistics, updated
    assert torch.equal(twin.frozen.running_mean, pre_mean)  # frozen wing: pre-trained statistics, unchanged
    assert twin.frozen.weight.grad is not None and twin.adaptive.weight.grad is not None
    assert not torch.equal(twin.frozen.weight.grad, twin.adaptive.weight.grad)  # separate affine parameters
    assert encoder.conv1.weight.grad is not None  # shared convolutions learn from both wings
    with pytest.raises(ZSBenchError) as err:
        method.loss(Step(x=x[:1], y=y[:1], model=clf, frozen=None, attack=lambda fn: x[:1]))
    one_line(err)


def test_twins_trained_state_round_trips(tmp_path):
    model = fresh(RN).model
    method = TWINS()
    encoder = method.build_encoder(model)
    clf = classifier(encoder, random_head()).train()
    opt = torch.optim.SGD(method.trainable_parameters(encoder), lr=1e-3)  # small enough to stay finite
    x, y = images(8), torch.arange(8)
    for _ in range(2):
        loss, _ = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = method.trained_state(encoder)
    assert any(k.endswith("frozen.running_mean") for k in state) and any(
        k.endswith("adaptive.running_var") for k in state
    )
    save_file(state, str(tmp_path / "twins.safetensors"))

    other = method.build_encoder(fresh(RN).model)
    method.load_trained_state(other, load_file(str(tmp_path / "twins.safetensors")))
    encoder.eval()
    other.eval()
    xn = (images(4, seed=5) - 0.5) / 0.25
    with torch.no_grad():
        assert torch.isfinite(encoder(xn)).all() and torch.equal(other(xn), encoder(xn))
        with twin_mode(other, "frozen"), twin_mode(encoder, "frozen"):
            assert torch.isfinite(encoder(xn)).all() and torch.equal(other(xn), encoder(xn))
    with pytest.raises(ZSBenchError) as err:
        method.load_trained_state(fresh(RN).model.visual, state)  # a tower without twins does not fit
    one_line(err)


def test_vp_old_checkpoints_with_a_trained_position_still_load(tmp_path):
    """Checkpoints of the earlier version trained the tokens' positional embedding: it loads into the zero buffer, so
    such a checkpoint is evaluated as it was trained; new checkpoints never hold it."""
    method = VPTeCoA(VisualPromptConfig(n_tokens=4))
    encoder = method.build_encoder(fresh(VIT).model)
    old = {**method.trained_state(encoder), "prompt_pos_embedding": torch.randn(4, 64)}
    other = method.build_encoder(fresh(VIT).model)
    method.load_trained_state(other, old)
    assert torch.equal(other.prompt_pos_embedding, old["prompt_pos_embedding"])
    assert "prompt_pos_embedding" not in method.trained_state(other)


def test_vp_one_sgd_step_moves_each_prompt_as_the_official_optimizer():
    """What trains, how it starts and how fast it moves, against the official TeCoA visual-prompt code: the border
    and the tokens from N(0, 1), nothing else; one SGD step at lr 40 moves every token by lr * grad exactly once
    (an extra trained positional embedding would add the same gradient a second time)."""
    from robustbench_zs.train.engine import _optimizer

    torch.manual_seed(0)
    method = VPTeCoA(VisualPromptConfig(n_tokens=50))
    encoder = method.build_encoder(fresh(VIT).model)
    tokens = encoder.prompt_tokens.detach().clone()
    pad = encoder.pad_prompt.detach()[encoder.pad_mask.expand(3, -1, -1) > 0]
    assert abs(tokens.mean()) < 0.1 and abs(tokens.std() - 1) < 0.1  # N(0, 1) as torch.randn
    assert abs(pad.mean()) < 0.1 and abs(pad.std() - 1) < 0.1
    assert not encoder.pad_prompt.detach()[encoder.pad_mask.expand(3, -1, -1) == 0].any()  # the interior stays 0
    assert method.recipe.lr == 40.0 and method.recipe.momentum == 0.9 and method.recipe.weight_decay == 0.0
    trainable = method.trainable_parameters(encoder)
    opt = _optimizer(trainable, method.recipe)
    clf = classifier(encoder, random_head())
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    loss, _ = method.loss(Step(x=x, y=y, model=clf, frozen=None, attack=lambda fn: x))
    loss.backward()
    grad = encoder.prompt_tokens.grad.detach().clone()
    opt.step()
    assert torch.allclose(encoder.prompt_tokens.detach(), tokens - 40.0 * grad, atol=1e-5)
    assert not encoder.prompt_pos_embedding.any()
