"""AutoAttack (official package or torchattacks components), APGD-CE/APGD-T and the CW-margin PGD."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch
from torch import nn

from robustbench_zs.attacks import autoattack as aa_mod
from robustbench_zs.attacks import cw as cw_mod
from robustbench_zs.attacks.apgd import (
    DEFAULT_ITERATIONS,
    N_TARGET_CLASSES,
    RHO,
    apgd_single,
    run_apgd_ce,
    run_apgd_t,
)
from robustbench_zs.attacks.autoattack import COMPONENTS, OFFICIAL, STANDARD, run_autoattack
from robustbench_zs.attacks.base import ATTACKS, PRECISIONS, Threat
from robustbench_zs.attacks.core import unit_noise
from robustbench_zs.attacks.pgd import pgd_single, run_pgd
from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS
from robustbench_zs.engine import runner
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import NORMALIZATIONS, ModelSpec, ZeroShotClassifier, load_model

DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("zsbench-tiny", "random", init_seed=0), DEVICE)


@pytest.fixture(scope="module")
def synthetic():
    return DATASETS.get("synthetic").loader(None, "test")


def _centroid_head(tiny):
    """Class means of the synthetic train split's image embeddings: a head that is accurate on clean images."""
    train = DATASETS.get("synthetic").loader(None, "train")
    mean, std = NORMALIZATIONS["clip"]
    probe = ZeroShotClassifier(tiny.model.visual, torch.zeros(10, 32), tiny.image_size, mean, std, 1.0)
    with torch.no_grad():
        feats = probe.features(train.images.float().div(255).to(DEVICE))
    head = torch.stack([feats[train.labels == c].mean(0) for c in range(10)])
    return torch.nn.functional.normalize(head, dim=-1)


@pytest.fixture(scope="module")
def centroid(tiny):
    mean, std = NORMALIZATIONS["clip"]
    return ZeroShotClassifier(tiny.model.visual, _centroid_head(tiny), tiny.image_size, mean, std, 100.0).to(DEVICE)


@pytest.fixture(scope="module")
def two_class(tiny, synthetic):
    """The centroid classifier restricted to classes 0 and 1, with images of those classes (like PCAM: 2 classes)."""
    mean, std = NORMALIZATIONS["clip"]
    model = ZeroShotClassifier(tiny.model.visual, _centroid_head(tiny)[:2], tiny.image_size, mean, std, 100.0)
    keep = (synthetic.labels < 2).nonzero().flatten()[:12]
    return model.to(DEVICE), (synthetic.images[keep].float() / 255).to(DEVICE), synthetic.labels[keep].to(DEVICE)


class InputBlind(nn.Module):
    """Logits that do not depend on the image (the input still enters the graph, with zero gradient)."""

    def __init__(self, n_classes: int = 10, winner: int = 3) -> None:
        super().__init__()
        bias = torch.zeros(n_classes)
        bias[winner] = 5.0
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _batch(synthetic, n: int, start: int = 0):
    x = (synthetic.images[start : start + n].float() / 255).to(DEVICE)
    return x, synthetic.labels[start : start + n].to(DEVICE), torch.arange(start, start + n) + 7 * 1_000_003


def _aa(eps255: float, norm: str = "linf") -> Threat:
    return Threat("autoattack", norm, eps255 / 255 if norm == "linf" else eps255)


# ------------------------------------------------------------------------------------------------------- settings
def test_standard_ensemble_settings_are_the_official_ones(centroid, synthetic):
    # fra31/auto-attack autoattack.py: constructors + set_version('standard'), L-inf and L2
    assert aa_mod.ORDER == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert STANDARD == {
        "apgd-ce": {"n_iter": 100, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot_iter": 1},
        "apgd-t": {
            "n_iter": 100,
            "n_restarts": 1,
            "loss": "dlr-targeted",
            "n_target_classes": 9,
            "rho": 0.75,
            "eot_iter": 1,
        },
        "fab-t": {"n_iter": 100, "n_restarts": 1, "n_target_classes": 9, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
        "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "resc_schedule": False},
    }
    assert (DEFAULT_ITERATIONS, RHO, N_TARGET_CLASSES) == (100, 0.75, 9)
    # the torchattacks objects really get those values (and the target count is capped at n_classes - 1)
    fab = aa_mod._make_fab(centroid, "linf", 4 / 255, 10, STANDARD["fab-t"])
    assert (fab.steps, fab.n_restarts, fab.alpha_max, fab.eta, fab.beta) == (100, 1, 0.1, 1.05, 0.9)
    assert fab.multi_targeted and fab.n_target_classes == 9 and fab.norm == "Linf" and fab.eps == 4 / 255
    assert aa_mod._make_fab(centroid, "l2", 0.5, 5, STANDARD["fab-t"]).n_target_classes == 4
    assert aa_mod._make_fab(centroid, "l2", 0.5, 2, STANDARD["fab-t"]).n_target_classes == 1
    sq = aa_mod._make_square(centroid, "l2", 0.5, STANDARD["square"])
    assert (sq.n_queries, sq.n_restarts, sq.p_init, sq.loss, sq.rescale_schedule, sq.norm) == (
        5000,
        1,
        0.8,
        "margin",
        False,
        "L2",
    )
    # the records and the per-call report carry the same values
    settings = aa_mod.describe(COMPONENTS)
    assert settings["settings"] == STANDARD and settings["version"] == "standard"
    json.dumps(settings)  # records are JSON
    x, y, seeds = _batch(synthetic, 4)
    report: dict = {}
    run_autoattack(centroid, x, y, [_aa(0)], seeds, report=report, implementation=COMPONENTS)
    assert report[_aa(0).slug]["settings"] == STANDARD


def test_components_run_with_every_setting_the_report_records(centroid, synthetic, monkeypatch):
    """Each component receives the settings the record claims: the official standard ones, or the overrides; values
    a component cannot run are refused before anything runs."""
    import torchattacks

    calls: dict = {}

    def recorder(name):
        def component(model, x, y, seeds, **kwargs):
            calls[name] = kwargs
            return kwargs["robust"].clone()

        return component

    class _Fake:
        def __init__(self, model, **kwargs):
            self.kwargs = kwargs
            calls[type(self).__name__] = self

        def perturb(self, x, y):
            return x.clone()

    class FAB(_Fake):
        pass

    class Square(_Fake):
        pass

    def square_linf(model, x, y, eps, seeds, **kwargs):  # L-inf Square (L2 runs torchattacks.Square)
        calls["square_linf"] = {"eps": eps, **kwargs}
        return x.clone()

    monkeypatch.setattr(aa_mod, "apgd_ce", recorder("apgd-ce"))
    monkeypatch.setattr(aa_mod, "apgd_targeted", recorder("apgd-t"))
    monkeypatch.setattr(aa_mod, "square_linf", square_linf)
    monkeypatch.setattr(torchattacks, "FAB", FAB)
    monkeypatch.setattr(torchattacks, "Square", Square)
    x, y, seeds = _batch(synthetic, 4)
    t = _aa(4)
    report: dict = {}
    run_autoattack(centroid, x, y, [t], seeds, report=report, implementation=COMPONENTS)
    picked = {name: {k: calls[name][k] for k in STANDARD[name]} for name in ("apgd-ce", "apgd-t")}
    assert picked["apgd-ce"] == {"n_iter": 100, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot_iter": 1}
    assert picked["apgd-t"] == {
        "n_iter": 100,
        "n_restarts": 1,
        "loss": "dlr-targeted",
        "n_target_classes": 9,  # min(9, C - 1) with C = 10, capped inside apgd_targeted
        "rho": 0.75,
        "eot_iter": 1,
    }
    for name in ("apgd-ce", "apgd-t"):
        assert (calls[name]["norm"], calls[name]["eps"]) == ("linf", 4 / 255)
    fab, square = calls["FAB"], calls["square_linf"]
    assert {k: fab.kwargs[k] for k in ("steps", "n_restarts", "alpha_max", "eta", "beta", "norm", "eps")} == {
        "steps": 100,
        "n_restarts": 1,
        "alpha_max": 0.1,
        "eta": 1.05,
        "beta": 0.9,
        "norm": "Linf",
        "eps": 4 / 255,
    }
    assert fab.kwargs["multi_targeted"] and fab.n_target_classes == 9
    square_standard = {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "resc_schedule": False}
    assert square == {"eps": 4 / 255, **square_standard}
    run_autoattack(centroid, x, y, [_aa(0.5, "l2")], seeds, implementation=COMPONENTS)
    assert {k: calls["Square"].kwargs[k] for k in square_standard} == square_standard
    assert (calls["Square"].kwargs["norm"], calls["Square"].kwargs["eps"]) == ("L2", 0.5)
    entry = report[t.slug]
    assert entry["settings"] == STANDARD and entry["n_target_classes"] == {"apgd-t": 9, "fab-t": 9}

    overrides = {
        "apgd-ce": {"rho": 0.5, "eot_iter": 2, "n_restarts": 3},
        "apgd-t": {"rho": 0.6, "n_target_classes": 3, "n_iter": 7},
        "fab-t": {"eta": 1.2},
        "square": {"p_init": 0.3, "loss": "ce"},
    }
    report = {}
    run_autoattack(centroid, x, y, [t], seeds, report=report, implementation=COMPONENTS, settings=overrides)
    for name in ("apgd-ce", "apgd-t"):
        assert {k: calls[name][k] for k in overrides[name]} == overrides[name]
    assert calls["FAB"].kwargs["eta"] == 1.2
    assert (calls["square_linf"]["p_init"], calls["square_linf"]["loss"]) == (0.3, "ce")
    for name, values in overrides.items():
        assert {k: report[t.slug]["settings"][name][k] for k in values} == values

    for bad in ({"apgd-ce": {"loss": "dlr"}}, {"apgd-t": {"loss": "ce-targeted"}}, {"square": {"loss": "l2"}}):
        calls.clear()
        with pytest.raises(ZSBenchError, match="cannot run with loss") as err:
            run_autoattack(centroid, x, y, [t], seeds, implementation=COMPONENTS, settings=bad)
        assert not calls and "\n" not in str(err.value)


def test_apgd_passes_rho_and_eot_iter_to_every_run(centroid, synthetic, monkeypatch):
    from robustbench_zs.attacks import apgd as apgd_mod

    x, y, seeds = _batch(synthetic, 8)
    centroid.eval()
    base = apgd_mod.apgd_ce(centroid, x, y, seeds, norm="linf", eps=1 / 255, n_iter=3)
    # a deterministic model: averaging 2 identical gradients changes nothing
    assert torch.equal(apgd_mod.apgd_ce(centroid, x, y, seeds, norm="linf", eps=1 / 255, n_iter=3, eot_iter=2), base)
    seen = []
    real = apgd_mod.apgd_single

    def spy(*args, **kwargs):
        seen.append((kwargs["rho"], kwargs["eot_iter"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(apgd_mod, "apgd_single", spy)
    apgd_mod.apgd_ce(centroid, x, y, seeds, norm="linf", eps=1 / 255, n_iter=2, n_restarts=2, rho=0.5, eot_iter=2)
    apgd_mod.apgd_targeted(
        centroid, x, y, seeds, norm="linf", eps=1 / 255, n_iter=2, n_target_classes=2, rho=0.4, eot_iter=3
    )
    assert seen and set(seen) == {(0.5, 2), (0.4, 3)}
    with pytest.raises(ZSBenchError, match="'ce' loss only"):
        apgd_mod.apgd_ce(centroid, x, y, seeds, norm="linf", eps=1 / 255, loss="dlr")
    with pytest.raises(ZSBenchError, match="eot_iter"):
        real(centroid, x, y, norm="linf", eps=1 / 255, n_iter=1, start=torch.zeros_like(x), eot_iter=0)


def test_our_apgd_equals_torchattacks_apgd_from_the_same_start(centroid, synthetic):
    """Same start point -> the same per-image outcome as torchattacks' APGD/APGDT (CE and targeted DLR, both norms)."""
    import torchattacks

    x, y, _ = _batch(synthetic, 32)
    centroid.eval()
    with torch.no_grad():
        idx = (centroid(x).argmax(1) == y).nonzero().flatten()
        order = centroid(x[idx]).sort(1).indices
    for norm, eps in (("Linf", 1 / 255), ("L2", 0.1)):

        def start(norm=norm):
            torch.manual_seed(5)  # torchattacks draws its start from the global generator after seeding it
            t = 2 * torch.rand(x[idx].shape) - 1 if norm == "Linf" else torch.randn(x[idx].shape)
            return t.to(DEVICE)

        ref = torchattacks.APGD(centroid, norm=norm, eps=eps, steps=20, n_restarts=1, seed=5, loss="ce", rho=0.75)
        acc, _ = ref.perturb(x, y, cheap=True)
        ours = apgd_single(centroid, x[idx], y[idx], norm=norm.lower(), eps=eps, n_iter=20, start=start())
        assert torch.equal(acc[idx], ours)
        ref_t = torchattacks.APGDT(centroid, norm=norm, eps=eps, steps=20, n_restarts=1, seed=5, rho=0.75, n_classes=10)
        ref_t.n_target_classes = 1
        acc, _ = ref_t.perturb(x, y, cheap=True)
        ours = apgd_single(
            centroid, x[idx], y[idx], norm=norm.lower(), eps=eps, n_iter=20, start=start(), y_target=order[:, -2]
        )
        assert torch.equal(acc[idx], ours)
        assert 0 < int(ours.sum()) < len(idx), "the comparison should see both outcomes"


def test_cw_loss_is_the_official_margin_with_kappa_50():
    logits = torch.randn(6, 5) * 40
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mask = torch.nn.functional.one_hot(y, 5).float()
    correct = (mask * logits).sum(1)
    wrong = ((1 - mask) * logits - 1e4 * mask).amax(1)
    assert torch.allclose(cw_mod.cw_margin_loss(logits, y), -torch.relu(correct - wrong + 50))
    assert cw_mod.KAPPA == 50 and ATTACKS.get("cw").fixed_settings["kappa"] == 50


# ------------------------------------------------------------------------------------------------------ strength
def test_autoattack_is_not_weaker_than_pgd10(centroid, synthetic):
    x, y, seeds = _batch(synthetic, 16)
    aa, pgd = _aa(1), Threat("pgd", "linf", 1 / 255, 10, 0.25 / 255)
    report: dict = {}
    quick = {"apgd-t": {"n_iter": 20, "n_target_classes": 3}, "fab-t": {"n_iter": 20}, "square": {"n_queries": 50}}
    robust = run_autoattack(centroid, x, y, [aa], seeds, report=report, implementation=COMPONENTS, settings=quick)[aa]
    robust_pgd = run_pgd(centroid, x, y, [pgd], seeds)[pgd]
    with torch.no_grad():
        clean = centroid(x).argmax(1) == y
    assert clean.sum() >= 14
    assert robust_pgd.sum() < clean.sum(), "PGD-10 should remove some accuracy"
    assert robust.sum() <= robust_pgd.sum()
    assert not torch.any(robust & ~clean)
    counts = report[aa.slug]["robust"]
    assert report[aa.slug]["ran"] == list(aa_mod.ORDER) and not report[aa.slug]["skipped"]
    assert [counts[k] for k in ("clean", *aa_mod.ORDER)] == sorted(counts.values(), reverse=True)
    assert counts["square"] == int(robust.sum())
    # the cascade is at least as strong as its first component alone
    ce = Threat("apgd-ce", "linf", 1 / 255)
    assert robust.sum() <= run_apgd_ce(centroid, x, y, [ce], seeds)[ce].sum()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_input_blind_model_keeps_its_clean_accuracy_under_every_attack(synthetic, quick_standard, norm, eps):
    model = InputBlind().to(DEVICE)
    y = torch.tensor([3, 3, 3, 0, 1, 2, 4, 5], device=DEVICE)
    x = (synthetic.images[:8].float() / 255).to(DEVICE)
    clean = y == 3
    for name in ATTACKS.names():
        t = Threat(name, norm, eps, 5, eps / 4)
        robust = ATTACKS.get(name).run(model, x, y, [t], torch.arange(8))[t]
        assert torch.equal(robust & clean, clean), name


# ---------------------------------------------------------------------------------------------- fewer classes
def test_two_class_model_runs_autoattack_to_the_end_and_records_the_skip(two_class, quick_standard):
    model, x, y = two_class
    threats = [_aa(2), _aa(0.3, "l2")]
    report: dict = {}
    out = run_autoattack(model, x, y, threats, torch.arange(len(y)), report=report, implementation=COMPONENTS)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert clean.sum() >= 8
    for t in threats:
        assert not torch.any(out[t] & ~clean)
        entry = report[t.slug]
        assert entry["n_classes"] == 2
        assert entry["ran"] == ["apgd-ce", "fab-t", "square"]
        assert set(entry["skipped"]) == {"apgd-t"} and "4 classes" in entry["skipped"]["apgd-t"]
        assert entry["n_target_classes"] == {"fab-t": 1}
        assert set(entry["robust"]) == {"clean", "apgd-ce", "fab-t", "square"}
        assert entry["robust"]["fab-t"] > 0, "Square should have had points to attack"
    assert ATTACKS.get("autoattack").fixed_settings["fewer_than_4_classes"].startswith("APGD-T skipped")
    # the stand-alone APGD-T refuses with one line; APGD-CE and CW run
    with pytest.raises(ZSBenchError) as err:
        run_apgd_t(model, x, y, [Threat("apgd-t", "linf", 2 / 255, 5)], torch.arange(len(y)))
    assert "4 classes" in str(err.value) and "\n" not in str(err.value)
    for name in ("apgd-ce", "cw"):
        th = Threat(name, "linf", 2 / 255, 5, 0.5 / 255)
        assert not torch.any(ATTACKS.get(name).run(model, x, y, [th], torch.arange(len(y)))[th] & ~clean)


# ---------------------------------------------------------------------------------------------- determinism
def test_batch_size_16_and_64_give_identical_per_example_results(centroid, synthetic, quick_standard):
    x, y, seeds = _batch(synthetic, 64, start=100)
    threats = [
        _aa(1),
        Threat("apgd-ce", "l2", 0.15, 10),
        Threat("apgd-t", "linf", 1 / 255, 5),
        Threat("cw", "linf", 1 / 255, 5, 0.25 / 255),
    ]
    for t in threats:
        run = ATTACKS.get(t.name).run
        small: dict = {}
        big: dict = {}
        kwargs = (lambda r: {"report": r}) if t.name == "autoattack" else (lambda r: {})
        parts = [
            run(centroid, x[i : i + 16], y[i : i + 16], [t], seeds[i : i + 16], **kwargs(small))[t]
            for i in range(0, 64, 16)
        ]
        whole = run(centroid, x, y, [t], seeds, **kwargs(big))[t]
        assert torch.equal(torch.cat(parts), whole), t.slug
        assert 0 < int(whole.sum()) < 64, t.slug
        if t.name == "autoattack":
            assert small[t.slug]["robust"] == big[t.slug]["robust"]
            assert small[t.slug]["n"] == 64
            assert big[t.slug]["robust"]["fab-t"] > 0, "Square should have had points to attack"


def test_global_random_state_is_left_alone(centroid, synthetic, quick_standard):
    x, y, seeds = _batch(synthetic, 8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_autoattack(centroid, x, y, [_aa(1)], seeds, implementation=COMPONENTS)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["autoattack", "apgd-ce", "apgd-t", "cw"])
def test_eps_zero_is_the_clean_accuracy(centroid, synthetic, name):
    x, y, seeds = _batch(synthetic, 16)
    t = Threat(name, "linf", 0.0, 3, 0.0)
    robust = ATTACKS.get(name).run(centroid, x, y, [t], seeds)[t]
    with torch.no_grad():
        clean = centroid(x).argmax(1) == y
    assert torch.equal(robust, clean)
    entry = ATTACKS.get(name)
    for precision in PRECISIONS:
        tp = Threat(name, "linf", 0.0, 3, 0.0, precision=precision)
        if precision == "bf16" and precision in entry.precisions:  # the bf16 verdict is an fp32 forward
            assert torch.equal(entry.run(centroid, x, y, [tp], seeds)[tp], clean)
        elif precision not in entry.precisions:  # refused, rather than mislabel a record
            with pytest.raises(ZSBenchError, match=f"{precision!r}"):
                entry.run(centroid, x, y, [tp], seeds)
    assert ATTACKS.get("autoattack").precisions == ("fp32", "fp16")


def test_attacks_restore_train_mode_and_requires_grad(centroid, synthetic, quick_standard):
    model = centroid
    x, y, seeds = _batch(synthetic, 8)
    params = list(model.parameters())
    params[0].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    try:
        for t in (
            _aa(1),
            Threat("apgd-ce", "linf", 1 / 255, 3),
            Threat("apgd-t", "l2", 0.1, 3),
            Threat("cw", "l2", 0.1, 3, 0.05),
        ):
            model.train()
            ATTACKS.get(t.name).run(model, x, y, [t], seeds)
            assert model.training, t.name
            assert [p.requires_grad for p in params] == flags, t.name
            assert all(p.grad is None for p in params), f"{t.name} accumulated parameter gradients"
    finally:
        params[0].requires_grad_(True)
        model.eval()


# --------------------------------------------------------------------------------------------- official package
def _fake_autoattack(tmp_path, calls: list):
    """A stand-in for fra31/auto-attack that records how it is used and 'attacks' with our PGD."""
    checkout = tmp_path / "auto-attack"
    (checkout / ".git" / "refs" / "heads").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    (checkout / ".git" / "refs" / "heads" / "master").write_text("0123456789abcdef0123456789abcdef01234567\n")

    class AutoAttack:
        def __init__(
            self,
            model,
            norm="Linf",
            eps=0.3,
            seed=None,
            verbose=True,
            attacks_to_run=(),
            version="standard",
            device="cuda",
            **kw,
        ):
            self.model, self.norm, self.epsilon, self.seed, self.version, self.device = (
                model,
                norm,
                eps,
                seed,
                version,
                device,
            )
            self.attacks_to_run = ["apgd-ce", "apgd-t", "fab-t", "square"]
            self.apgd = types.SimpleNamespace(n_restarts=1)
            self.apgd_targeted = types.SimpleNamespace(n_target_classes=9, n_restarts=1)
            self.fab = types.SimpleNamespace(n_target_classes=9, n_restarts=1)
            self.square = types.SimpleNamespace(n_queries=5000)
            calls.append({"init": {"norm": norm, "eps": eps, "version": version, "device": device, "verbose": verbose}})

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
            calls[-1]["run"] = {
                "bs": bs,
                "n": len(x_orig),
                "seed": self.seed,
                "attacks_to_run": list(self.attacks_to_run),
                "apgd_t_targets": self.apgd_targeted.n_target_classes,
                "fab_targets": self.fab.n_target_classes,
            }
            norm = {"Linf": "linf", "L2": "l2"}[self.norm]
            t = Threat("pgd", norm, self.epsilon, 10, self.epsilon / 4)
            noise = unit_noise(tuple(x_orig.shape[1:]), torch.arange(len(x_orig)), x_orig.device, norm)
            x_adv, _ = pgd_single(self.model, x_orig, y_orig, t, noise)
            return x_adv

    module = types.ModuleType("autoattack")
    module.AutoAttack = AutoAttack
    module.__file__ = str(checkout / "autoattack" / "__init__.py")
    return module


def test_official_package_path_with_a_fake_module(tmp_path, monkeypatch, capsys, centroid, synthetic, two_class):
    calls: list = []
    x, y, seeds = _batch(synthetic, 16)
    try:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "autoattack", _fake_autoattack(tmp_path, calls))
            assert aa_mod.refresh_implementation() == OFFICIAL
            settings = Threat("autoattack", "linf", 2 / 255).settings()
            assert settings["implementation"] == "fra31/auto-attack"
            assert settings["commit"] == "0123456789abcdef0123456789abcdef01234567"
            t = _aa(2)
            report: dict = {}
            robust = ATTACKS.get("autoattack").run(centroid, x, y, [t], seeds, report=report)[t]
            assert calls[0]["init"] == {
                "norm": "Linf",
                "eps": 2 / 255,
                "version": "standard",
                "device": DEVICE,
                "verbose": False,
            }
            assert calls[0]["run"] == {
                "bs": 16,
                "n": 16,
                "seed": int(seeds[0]),
                "attacks_to_run": ["apgd-ce", "apgd-t", "fab-t", "square"],
                "apgd_t_targets": 9,
                "fab_targets": 9,
            }
            # robust = correct on the clean image and on the returned adversarial image
            noise = unit_noise(tuple(x.shape[1:]), torch.arange(16), x.device, "linf")
            x_adv, _ = pgd_single(centroid.eval(), x, y, Threat("pgd", "linf", 2 / 255, 10, 0.5 / 255), noise)
            with torch.no_grad():
                expected = (centroid(x).argmax(1) == y) & (centroid(x_adv).argmax(1) == y)
            assert torch.equal(robust, expected) and robust.sum() < expected.numel()
            assert report[t.slug]["implementation"] == OFFICIAL and report[t.slug]["ran"] == list(aa_mod.ORDER)
            # the official code's results depend on the batch: the settings say so and the report gives each bs
            assert settings["depends_on_batch_size"] is True and "bs=len(x)" in settings["batch"]
            assert report[t.slug]["batch_sizes"] == [16]
            ATTACKS.get("autoattack").run(centroid, x[:5], y[:5], [t], seeds[:5], report=report)
            assert report[t.slug]["batch_sizes"] == [16, 5] and calls[-1]["run"]["bs"] == 5
            # its adversarial images: misclassified exactly where the run says not robust
            x_adv = ATTACKS.get("autoattack").perturb(centroid, x, y, t, seeds)
            with torch.no_grad():
                assert torch.equal(centroid(x_adv).argmax(1) != y, ~robust)
            calls.clear()

            model2, x2, y2 = two_class
            report = {}
            ATTACKS.get("autoattack").run(model2, x2, y2, [t], torch.arange(len(y2)), report=report)
            assert calls[0]["run"]["attacks_to_run"] == ["apgd-ce", "fab-t", "square"]
            assert calls[0]["run"]["apgd_t_targets"] == 1 and calls[0]["run"]["fab_targets"] == 1
            assert "apgd-t" in report[t.slug]["skipped"]
            with pytest.raises(ZSBenchError):
                run_autoattack(centroid, x, y, [t], seeds, settings={"square": {"n_queries": 10}})

            # zsbench run: the attack batch size is in the record and in its key, so a run (or a resumed run) with
            # another batch size gets its own record and partial file instead of mixing per-example results
            argv = ["run", "--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
            argv += ["--methods", "clip", "--datasets", "synthetic", "--n", "8", "--attack", "autoattack", "--eps", "2"]
            out = tmp_path / "r"
            paths = {}
            calls.clear()
            for bs in (4, 8, 4):
                assert main([*argv, "--out", str(out), "--batch-size", str(bs)]) == 0
                recs = {p: json.loads(p.read_text()) for p in (out / "records").rglob("autoattack-*.json")}
                paths[bs] = sorted(p for p, r in recs.items() if r["attack"]["attack_batch_size"] == bs)
            assert len(paths[4]) == len(paths[8]) == 1 and paths[4] != paths[8]
            assert runner.partial_path(paths[4][0]) != runner.partial_path(paths[8][0])
            assert [c["run"]["bs"] for c in calls if "run" in c] == [4, 4, 8]  # the third run found its record
            rec = json.loads(paths[8][0].read_text())
            assert rec["attack"]["implementation"] == OFFICIAL and rec["run"]["batch_size"] == 8
            capsys.readouterr()
            assert main([*argv, "--out", str(out), "--batch-size", "auto"]) == 2  # the key needs a fixed batch
            assert "depend on the batch size" in capsys.readouterr().err
    finally:
        aa_mod.refresh_implementation()
    assert ATTACKS.get("autoattack").fixed_settings["implementation"] == COMPONENTS
    assert "attack_batch_size" not in runner.attack_settings(_aa(2), 8)  # batch-independent: not in the key


def test_official_commit_from_pips_direct_url(monkeypatch):
    class Dist:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps(
                {"url": "https://github.com/fra31/auto-attack", "vcs_info": {"vcs": "git", "commit_id": "a" * 40}}
            )

    monkeypatch.setattr(aa_mod.importlib.metadata, "distribution", lambda name: Dist())
    assert aa_mod.official_commit() == "a" * 40


def test_registered_settings_name_the_components_implementation():
    if aa_mod.official_available():
        pytest.skip("fra31/auto-attack is installed: the registered implementation is the official one")
    fixed = ATTACKS.get("autoattack").fixed_settings
    assert fixed["implementation"] == COMPONENTS  # the official package is not installed here
    assert fixed["torchattacks_version"] == "3.5.1"
    assert "AutoAttack" not in json.dumps(fixed["component_code"])
    s = Threat("autoattack", "l2", 0.5).settings()
    assert s["settings"]["square"]["n_queries"] == 5000 and s["version"] == "standard"
    with pytest.raises(ZSBenchError):
        run_autoattack(
            InputBlind(),
            torch.zeros(1, 3, 8, 8),
            torch.zeros(1, dtype=torch.long),
            [_aa(1)],
            torch.zeros(1),
            settings={"square": {"queries": 1}},
        )


def test_importing_autoattack_detects_nothing():
    """The implementation is detected at first use, not at import; torchattacks is imported only when it runs."""
    code = (
        "import sys; from robustbench_zs.attacks import ATTACKS, autoattack as aa; "
        "assert aa.registered_settings.cache_info().currsize == 0; "
        "assert 'torchattacks' not in sys.modules and 'autoattack' not in sys.modules; "
        "assert ATTACKS.get('autoattack').fixed_settings['implementation'] in aa.IMPLEMENTATIONS; "
        "assert aa.registered_settings.cache_info().currsize == 1"
    )
    import subprocess

    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
