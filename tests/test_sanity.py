"""Attack precision (fp32 / bf16 PGD and APGD-CE) and the evaluation sanity checks of ``attacks.sanity``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_zs.attacks import Threat, pgd_single, run_pgd
from robustbench_zs.attacks.base import PRECISIONS
from robustbench_zs.attacks.core import AUTOCAST_DTYPES, attack_autocast
from robustbench_zs.attacks.sanity import (
    SQUARE_ALPHA,
    autoattack_above_pgd,
    check_all,
    leaderboard_flags,
    robust_above_clean,
    robust_rises_with_eps,
    square_beats_gradient,
    zero_gradient_fraction,
)
from robustbench_zs.datasets import DATASETS, select_subset
from robustbench_zs.engine import evaluate
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import NORMALIZATIONS, ModelSpec, ZeroShotClassifier, load_model

DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))
KEYS = {"name", "passed", "value", "detail"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return DATASETS.get("synthetic").loader(None, "test")


@pytest.fixture(scope="module")
def accurate():
    """Tiny random ViT with a nearest-centroid head fitted on the synthetic train split (accurate on clean images)."""
    tiny = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0), DEVICE)
    train = DATASETS.get("synthetic").loader(None, "train")
    mean, std = NORMALIZATIONS["clip"]
    probe = ZeroShotClassifier(tiny.model.visual, torch.zeros(10, 32), tiny.image_size, mean, std, 1.0)
    with torch.no_grad():
        feats = probe.features(train.images.float().div(255).to(DEVICE))
    head = F.normalize(torch.stack([feats[train.labels == c].mean(0) for c in range(10)]), dim=-1)
    return ZeroShotClassifier(tiny.model.visual, head, tiny.image_size, mean, std, 100.0).to(DEVICE).eval()


class ConstantLogits(nn.Module):
    """Logits that ignore the input: every input gradient is exactly zero."""

    def __init__(self, through_input: bool) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-1, 1, 10))
        self.through_input = through_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits.expand(len(x), -1)
        return out + 0 * x.flatten(1).sum(1, keepdim=True) if self.through_input else out


def _batch(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return data.images[:n].float().div(255).to(DEVICE), data.labels[:n].to(DEVICE)


# --- precision -------------------------------------------------------------------------------------------------------

PGD_EPS1 = {"norm": "linf", "eps": 1 / 255, "steps": 5, "step_size": 0.5 / 255}
BF16_ATTACKS = {"pgd": PGD_EPS1, "apgd-ce": {"norm": "linf", "eps": 1 / 255, "steps": 5}}
"""The attacks that run in bf16, at L-inf 1/255 with 5 iterations (robust acc. ~70% in fp32 for both)."""


@pytest.fixture(scope="module")
def precision_runs(accurate, data):
    """Each bf16 attack on 256 images, fp32 and bf16, at attack batch sizes 16 and 64."""
    sub = select_subset(len(data), 256, seed=0)
    out = {}
    for name, kwargs in BF16_ATTACKS.items():
        for precision in ("fp32", "bf16"):
            t = Threat(name, precision=precision, **kwargs)
            for bs in (16, 64):
                out[name, precision, bs] = (t, evaluate(accurate, data, [t], subset=sub, batch_size=bs, seed=5))
    return out


def test_bf16_attacks_are_the_registered_ones():
    from robustbench_zs.attacks import ATTACKS

    assert {n for n in ATTACKS.names() if "bf16" in ATTACKS.get(n).precisions} == set(BF16_ATTACKS)


# fp16 is left out on purpose: it reproduces the official attack (batch-mean loss, no loss scaling), whose results
# do depend on the batch size (PMG-AFT issue #1); it exists only for the paper profile
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(BF16_ATTACKS))
def test_robust_accuracy_does_not_depend_on_attack_batch_size(precision_runs, name, precision):
    t, small = precision_runs[name, precision, 16]
    _, large = precision_runs[name, precision, 64]
    np.testing.assert_array_equal(small.clean, large.clean)
    np.testing.assert_array_equal(small.robust[t], large.robust[t])
    assert small.accuracy(t) == large.accuracy(t)


@pytest.mark.parametrize("name", list(BF16_ATTACKS))
def test_fp32_and_bf16_attacks_agree(precision_runs, name):
    """Tolerance: per-example agreement >= 95% and robust accuracy within 3 points on 256 images.

    Observed on CPU: PGD-5 99.2% agreement, both 69.9% robust; APGD-CE-5 98.8%, 69.1% and 70.3%. (CW and APGD-T,
    whose losses are differences of logits, missed it by far in bf16, so they run in fp32 only.)
    """
    t32, r32 = precision_runs[name, "fp32", 64]
    t16, r16 = precision_runs[name, "bf16", 64]
    assert r32.n == 256 and r32.accuracy() > 0.9
    assert 0.3 < r32.accuracy(t32) < r32.accuracy() - 0.1, "the attack should remove some accuracy, not all"
    agreement = float((r32.robust[t32] == r16.robust[t16]).mean())
    assert agreement >= 0.95
    assert abs(r32.accuracy(t32) - r16.accuracy(t16)) <= 0.03
    for t, r in ((t32, r32), (t16, r16)):
        assert all(c["passed"] for c in check_all(r)), t


def test_bf16_with_eps_zero_is_the_clean_accuracy(accurate, data):
    """The bf16 verdict is taken in fp32, so a zero budget reproduces the (fp32) clean predictions exactly."""
    x, y = _batch(data, 64)
    t = Threat("pgd", "linf", 0.0, 2, 1 / 255, precision="bf16")
    x_adv, robust = pgd_single(accurate, x, y, t, None)
    assert torch.equal(x_adv, x)
    with torch.no_grad():
        assert torch.equal(robust, accurate(x).argmax(1) == y)


def test_bf16_attack_restores_mode_and_stays_in_the_ball(accurate, data):
    x, y = _batch(data, 16)
    accurate.train()
    flags = [p.requires_grad for p in accurate.parameters()]
    try:
        t = Threat("pgd", "l2", 0.25, 2, 0.1, precision="bf16")
        robust = run_pgd(accurate, x, y, [t], torch.arange(16))[t]
        assert accurate.training
        assert [p.requires_grad for p in accurate.parameters()] == flags
        assert all(p.grad is None for p in accurate.parameters())
        assert robust.dtype == torch.bool and robust.shape == (16,)
        x_adv, _ = pgd_single(accurate, x, y, t, torch.rand_like(x) * 2 - 1)
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.25 + 1e-5
    finally:
        accurate.eval()


def test_precision_is_validated_and_shown():
    assert set(AUTOCAST_DTYPES) == set(PRECISIONS) == {"fp32", "bf16", "fp16"}
    with pytest.raises(ZSBenchError, match="precision"):
        Threat("pgd", "linf", 1 / 255, 2, 1 / 255, precision="fp8")
    t32 = Threat("pgd", "linf", 1 / 255, 10, 1 / 255)
    t16 = Threat("pgd", "linf", 1 / 255, 10, 1 / 255, precision="bf16")
    assert t32.slug == "pgd-linf-eps1-steps10" and t32.label == "PGD-10 L∞ ε=1/255"
    assert t16.slug == "pgd-linf-eps1-steps10-bf16" and t16.label == "PGD-10 L∞ ε=1/255 bf16"
    assert t16.settings()["precision"] == "bf16"


def test_fp32_attack_autocast_is_off_inside_an_outer_autocast():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
        with attack_autocast(x.device, "fp32"):
            assert lin(x).dtype == torch.float32
    with attack_autocast(x.device, "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with attack_autocast(x.device, "fp16"):
        assert lin(x).dtype == torch.float16
    with pytest.raises(ValueError):
        attack_autocast("cpu", "fp8")


# --- (a) zero gradients ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through_input", [False, True])
def test_zero_gradient_fraction_is_one_for_a_model_that_ignores_its_input(data, through_input):
    x, y = _batch(data, 8)
    model = ConstantLogits(through_input).to(DEVICE).train()
    c = zero_gradient_fraction(model, x, y)
    assert set(c) == KEYS and c["name"] == "zero_gradient_fraction"
    assert c["value"] == 1.0 and c["passed"] is False
    assert model.training and model.logits.requires_grad and model.logits.grad is None


def test_zero_gradient_fraction_is_zero_for_the_tiny_classifier(accurate, data):
    x, y = _batch(data, 64)
    accurate.train()
    flags = [p.requires_grad for p in accurate.parameters()]
    try:
        with torch.no_grad():  # the check must work from a no-grad caller too
            c = zero_gradient_fraction(accurate, x, y)
        assert c["value"] < 0.05 and isinstance(c["value"], float)
        assert c["passed"] == (c["value"] == 0)
        assert zero_gradient_fraction(accurate, x, y, batch_size=24)["value"] == c["value"]
        assert accurate.training and [p.requires_grad for p in accurate.parameters()] == flags
        assert all(p.grad is None for p in accurate.parameters())
    finally:
        accurate.eval()


# --- (b) robust above clean ------------------------------------------------------------------------------------------


def test_robust_above_clean():
    clean = np.array([1, 1, 0, 1, 0], bool)
    ok = robust_above_clean(clean, np.array([1, 0, 0, 1, 0], bool), label="PGD")
    assert ok["passed"] and ok["value"] == 0 and set(ok) == KEYS
    bad = robust_above_clean(clean, torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool))
    assert not bad["passed"] and bad["value"] == 2
    with pytest.raises(ValueError):
        robust_above_clean(clean, clean[:3])


# --- (c) AutoAttack above PGD ----------------------------------------------------------------------------------------


def test_autoattack_above_pgd():
    pgd = np.array([1, 1, 1, 0, 0, 1], bool)
    ok = autoattack_above_pgd(np.array([1, 0, 1, 0, 0, 0], bool), pgd)
    assert ok["passed"] and ok["value"] == -2
    # one point only PGD breaks is fine as long as AutoAttack's count is not higher
    assert autoattack_above_pgd(np.array([1, 1, 0, 1, 0, 0], bool), pgd)["passed"]
    bad = autoattack_above_pgd(np.array([1, 1, 1, 1, 0, 1], bool), pgd)
    assert not bad["passed"] and bad["value"] == 1


def test_autoattack_above_pgd_compares_only_common_images():
    # AutoAttack on images 10..13, PGD on 0..11: only 10 and 11 are common
    aa = autoattack_above_pgd([1, 1, 1, 1], [0] * 10 + [1, 0], aa_indices=[10, 11, 12, 13], pgd_indices=range(12))
    assert not aa["passed"] and aa["value"] == 1 and "2 common" in aa["detail"]
    aa = autoattack_above_pgd([1, 0, 1, 1], [0] * 10 + [1, 0], aa_indices=[10, 11, 12, 13], pgd_indices=range(12))
    assert aa["passed"] and aa["value"] == 0


# --- (d) robust accuracy rising with eps -----------------------------------------------------------------------------


def test_robust_rises_with_eps():
    ok = robust_rises_with_eps({1 / 255: [1, 1, 1, 0], 4 / 255: [1, 0, 0, 0], 2 / 255: [1, 1, 0, 0]})
    assert ok["passed"] and ok["value"] == 0.0
    # a single flip without a rise in accuracy passes
    assert robust_rises_with_eps({1 / 255: [1, 1, 0, 0], 2 / 255: [1, 0, 1, 0]})["passed"]
    bad = robust_rises_with_eps({1 / 255: [1, 0, 0, 0], 2 / 255: [1, 1, 0, 0], 4 / 255: [0, 0, 0, 0]})
    assert not bad["passed"] and bad["value"] == pytest.approx(0.25)
    assert "1/255" in bad["detail"] and "2/255" in bad["detail"]


def test_robust_rises_with_eps_uses_common_images():
    # on their own the masks are 50% at eps 1 and 75% at eps 2, but on the common images 2 and 3 both are 50%
    masks = {1 / 255: [0, 1, 1, 0], 2 / 255: [1, 0, 1, 1]}
    ok = robust_rises_with_eps(masks, indices_by_eps={1 / 255: [0, 1, 2, 3], 2 / 255: [2, 3, 4, 5]})
    assert ok["passed"]
    bad = robust_rises_with_eps(masks, indices_by_eps={1 / 255: [0, 1, 2, 3], 2 / 255: [0, 1, 2, 3]})
    assert not bad["passed"]


# --- (e) Square beating the gradient attacks -------------------------------------------------------------------------


def test_square_beats_gradient_alone_and_cascade():
    ce = np.array([1, 1, 1, 0, 1, 1], bool)
    t = np.array([1, 1, 0, 0, 1, 1], bool)
    ok = square_beats_gradient({"APGD-CE": ce, "apgd_t": t, "square": ce & t})
    assert ok["passed"] and ok["value"] == 0
    # Square alone breaks points 1 and 4, which both APGD runs left robust
    alone = square_beats_gradient({"apgd-ce": ce, "apgd-t": t, "square": np.array([1, 0, 1, 1, 0, 1], bool)})
    assert not alone["passed"] and alone["value"] == 2
    # the same run as AutoAttack's cascade (robust after each stage) gives the same count
    fab = ce & t
    cascade = {
        "clean": np.ones(6, bool),
        "apgd-ce": ce,
        "apgd-t": ce & t,
        "fab-t": fab,
        "square": fab & ~np.eye(6, dtype=bool)[[1, 4]].any(0),
    }
    assert square_beats_gradient(cascade)["value"] == 2
    with pytest.raises(ValueError):
        square_beats_gradient({"apgd-ce": ce, "apgd-t": t})


@pytest.mark.parametrize("n, broken, passed", [(1000, 2, True), (1000, 3, False), (500, 1, True), (500, 2, False)])
def test_square_beats_gradient_tolerates_at_most_alpha_of_the_images(n, broken, passed):
    """AutoAttack's check_square_sr: flag only when Square lowers robust accuracy by more than alpha = 0.2 points."""
    fab = np.zeros(n, bool)
    fab[: n // 2] = True  # half the points survive the gradient components
    square = fab.copy()
    square[:broken] = False  # Square breaks `broken` of them
    cascade = {"clean": np.ones(n, bool), "apgd-ce": fab, "apgd-t": fab, "fab-t": fab, "square": square}
    c = square_beats_gradient(cascade, label="AA")
    assert c["passed"] is passed and c["value"] == broken
    assert c["threshold"] == SQUARE_ALPHA == 0.002
    assert c["fraction"] == broken / n and c["n"] == n and c["robust_to_gradient"] == n // 2
    # the official rule on the accuracies after each stage says the same
    accuracy = {k: m.mean() for k, m in cascade.items()}
    official_warns = bool(accuracy["square"] < min(v for k, v in accuracy.items() if k != "square") - 0.002)
    assert official_warns is (not passed)
    assert (leaderboard_flags([c]) == "") is passed
    if not passed:
        assert leaderboard_flags([c]) == f"⚠ Square>grad {broken}"
    json.dumps(c)  # goes into the record as it is


# --- check_all and the leaderboard marker ----------------------------------------------------------------------------


@dataclass
class FakeResult:
    indices: np.ndarray
    clean: np.ndarray
    robust: dict = field(default_factory=dict)


def _t(name: str, eps255: float) -> Threat:
    return Threat(name, "linf", eps255 / 255, 10, eps255 / 4 / 255)


def test_check_all_on_consistent_and_inconsistent_results(accurate, data):
    idx = np.arange(6)
    clean = np.array([1, 1, 1, 1, 1, 0], bool)
    good = FakeResult(
        idx,
        clean,
        {
            _t("pgd", 1): np.array([1, 1, 1, 1, 0, 0], bool),
            _t("pgd", 4): np.array([1, 1, 0, 0, 0, 0], bool),
            _t("autoattack", 4): np.array([1, 0, 0, 0, 0, 0], bool),
        },
    )
    x, y = _batch(data, 16)
    comps = {"apgd-ce": [1, 1, 0, 0, 0, 0], "apgd-t": [1, 0, 0, 0, 0, 0], "square": [1, 0, 0, 0, 0, 0]}
    checks = check_all(good, model=accurate, x=x, y=y, components={_t("autoattack", 4): comps})
    names = [c["name"] for c in checks]
    assert names == [
        "zero_gradient_fraction",
        "robust_above_clean",
        "robust_above_clean",
        "robust_above_clean",
        "autoattack_above_pgd",
        "robust_rises_with_eps",
        "square_beats_gradient",
    ]
    assert all(c["passed"] for c in checks) and all(set(c) >= KEYS for c in checks)
    assert leaderboard_flags(checks) == ""

    bad = FakeResult(
        idx,
        clean,
        {
            _t("pgd", 1): np.array([1, 1, 0, 0, 0, 1], bool),  # robust but not clean at index 5
            _t("pgd", 4): np.array([1, 1, 1, 1, 0, 0], bool),  # higher than at eps 1
            _t("autoattack", 4): np.array([1, 1, 1, 1, 1, 0], bool),  # above PGD
        },
    )
    comps = {"apgd-ce": [1, 1, 1, 1, 0, 0], "apgd-t": [1, 1, 1, 1, 0, 0], "square": [1, 1, 0, 0, 0, 0]}
    checks = check_all([bad], components=comps)
    failed = {c["name"]: c for c in checks if not c["passed"]}
    assert set(failed) == {
        "robust_above_clean",
        "autoattack_above_pgd",
        "robust_rises_with_eps",
        "square_beats_gradient",
    }
    flags = leaderboard_flags(checks)
    assert flags == "⚠ robust>clean; AA>PGD; robust↑ε; Square>grad 2"


def test_check_all_across_subsets_and_on_a_real_evaluation(accurate, data):
    # PGD on images 0..7, AutoAttack on 4..11: compared on 4..7 only
    pgd = FakeResult(np.arange(8), np.ones(8, bool), {_t("pgd", 4): np.array([0, 0, 0, 0, 1, 1, 0, 0], bool)})
    aa = FakeResult(np.arange(4, 12), np.ones(8, bool), {_t("autoattack", 4): np.array([1, 1, 1, 0, 1, 1, 1, 1])})
    (c,) = [c for c in check_all([pgd, aa]) if c["name"] == "autoattack_above_pgd"]
    assert not c["passed"] and c["value"] == 1

    sub = select_subset(len(data), 48, seed=1)
    threats = [Threat("pgd", "linf", e / 255, 2, e / 2 / 255) for e in (0, 1, 4)]
    res = evaluate(accurate, data, threats, subset=sub, batch_size=48)
    checks = check_all(res)
    assert [c["name"] for c in checks].count("robust_rises_with_eps") == 1
    assert all(c["passed"] for c in checks), checks


def test_leaderboard_flags_format():
    checks = [
        {"name": "zero_gradient_fraction", "passed": False, "value": 0.12, "detail": ""},
        {"name": "robust_above_clean", "passed": True, "value": 0, "detail": ""},
        {"name": "autoattack_above_pgd", "passed": False, "value": 3, "detail": ""},
        {"name": "autoattack_above_pgd", "passed": False, "value": 1, "detail": ""},
    ]
    assert leaderboard_flags(checks) == "⚠ zero-grad 12%; AA>PGD"
    assert leaderboard_flags(checks[1:2]) == ""
    assert leaderboard_flags([]) == ""
    assert leaderboard_flags([{**checks[0], "value": 0.004}]) == "⚠ zero-grad 0.4%"


def test_robust_rising_with_more_attack_effort_is_flagged():
    from robustbench_zs.attacks.sanity import robust_rises_with_effort

    fewer, more = np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)
    ok = robust_rises_with_effort("steps", {10: fewer, 100: more}, label="PGD")
    assert ok["passed"] and ok["name"] == "robust_rises_with_steps"
    # steps: deterministic, any rise fails
    assert not robust_rises_with_effort("steps", {10: more, 100: fewer})["passed"]
    # EOT samples: random runs, so one image more is chance (sign test p = 0.5) and 8 of 8 discordant images is not
    assert robust_rises_with_effort("eot_samples", {1: more, 20: fewer}, label="PGD")["passed"]
    few, many = np.zeros(40, bool), np.zeros(40, bool)
    many[:8] = True
    bad = robust_rises_with_effort("eot_samples", {1: few, 20: many}, label="PGD")
    assert not bad["passed"] and bad["value"] == pytest.approx(0.2) and "EOT samples" in bad["detail"]
    assert "p = 0.00391" in bad["detail"] and "8 images robust only under 20" in bad["detail"]
    assert not robust_rises_with_effort("eot_samples", {1: more, 20: fewer}, alpha=None)["passed"]
    # compared on common images only: the extra image of the larger run does not count
    aligned = robust_rises_with_effort(
        "steps",
        {10: np.array([1, 0], bool), 20: np.array([1, 0, 1], bool)},
        indices_by_value={10: [5, 6], 20: [5, 6, 7]},
    )
    assert aligned["passed"]
    with pytest.raises(ValueError, match="unknown effort knob"):
        robust_rises_with_effort("eps", {1: fewer})
    assert leaderboard_flags([bad]) == "⚠ robust↑EOT"


def test_adaptive_above_non_adaptive_is_flagged():
    from robustbench_zs.attacks.sanity import adaptive_above_non_adaptive

    adaptive, plain = np.zeros(50, bool), np.zeros(50, bool)
    adaptive[:10], plain[:2] = True, True
    bad = adaptive_above_non_adaptive(adaptive, plain, label="PGD-10")
    assert not bad["passed"] and bad["value"] == 8 and "p = 0.00391" in bad["detail"]
    assert adaptive_above_non_adaptive(plain, adaptive)["passed"]
    assert leaderboard_flags([bad]) == "⚠ adaptive>non-adaptive"
    # a world-model run: 126 against 125 robust of 128, two images each way and one more; chance, not a flag
    a, na = np.ones(128, bool), np.ones(128, bool)
    a[[0, 1]], na[[2, 3, 4]] = False, False
    ok = adaptive_above_non_adaptive(a, na)
    assert (
        ok["passed"] and ok["value"] == 1 and "3 images robust only under the adaptive attack, 2 only" in ok["detail"]
    )
    assert not adaptive_above_non_adaptive(a, na, alpha=None)["passed"]


@pytest.mark.parametrize(
    "more, fewer, p", [(0, 0, 1.0), (1, 0, 0.5), (3, 3, 0.65625), (5, 0, 1 / 32), (10, 2, 79 / 4096), (0, 7, 1.0)]
)
def test_sign_test_is_the_exact_binomial_tail(more, fewer, p):
    from robustbench_zs.attacks.sanity import _sign_test

    assert _sign_test(more, fewer) == pytest.approx(p)
