"""AutoAttack under float16 autocast (``Threat.precision == "fp16"``), as the official PMG-AFT code ran it.

Every forward the attack makes (clean check, every component's forwards, the verdict) runs the model under float16
autocast and casts the logits to float32; fp32 runs never see autocast; bf16 is refused. On the CPU, torch's float16
autocast stands in for the official code's CUDA one.
"""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_zs.attacks import ATTACKS, Threat
from robustbench_zs.attacks import autoattack as aa_mod
from robustbench_zs.attacks.autoattack import COMPONENTS, OFFICIAL, AutocastForward, run_autoattack
from robustbench_zs.attacks.core import attack_autocast
from robustbench_zs.errors import ZSBenchError

DEVICE = torch.device(os.environ.get("ZSBENCH_TEST_DEVICE", "cpu"))
EPS = {"linf": 2 / 255, "l2": 0.25}

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(synthetic_test, start: int = 40, n: int = 16):
    x = (synthetic_test.images[start : start + n].float() / 255).to(DEVICE)
    y = synthetic_test.labels[start : start + n].clone().to(DEVICE)
    y[3] = (y[3] + 1) % 10  # one point misclassified on its clean image
    return x, y, torch.arange(start, start + n) + 3 * 1_000_003


def _aa(norm: str = "linf", precision: str = "fp32") -> Threat:
    return Threat("autoattack", norm, EPS[norm], precision=precision)


class ForwardSpy:
    """Per call of the model: whether autocast was on and its dtype (pre-hook), and the dtypes its Linear layers
    produced (forward hooks); removed by ``close``."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[bool, torch.dtype]] = []
        self.linear_dtypes: set[torch.dtype] = set()
        self.n_linear = 0
        kind = DEVICE.type

        def pre(module, args):
            self.calls.append((torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)))

        def post(module, args, output):
            self.linear_dtypes.add(output.dtype)
            self.n_linear += 1

        self.handles = [model.register_forward_pre_hook(pre)]
        self.handles += [m.register_forward_hook(post) for m in model.modules() if isinstance(m, nn.Linear)]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _fp16_predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return AutocastForward(model, "fp16")(x).argmax(1)


# ------------------------------------------------------------------------------------------------------ the wrapper
def test_the_wrapper_runs_fp16_even_inside_an_autocast_off_region(centroid_classifier, synthetic_test):
    x, _, _ = _batch(synthetic_test, n=4)
    lin = nn.Linear(4, 3).to(DEVICE)
    # a float16 autocast region nested in an autocast-off one (APGD's attack_autocast(device, "fp32")) is on
    with attack_autocast(DEVICE, "fp32"):
        assert lin(torch.randn(2, 4, device=DEVICE)).dtype == torch.float32
        with attack_autocast(DEVICE, "fp16"):
            assert lin(torch.randn(2, 4, device=DEVICE)).dtype == torch.float16
    model = centroid_classifier.eval()
    spy = ForwardSpy(model)
    try:
        with torch.no_grad(), attack_autocast(DEVICE, "fp32"):
            logits = AutocastForward(model, "fp16")(x)
    finally:
        spy.close()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert spy.calls == [(True, torch.float16)] and spy.linear_dtypes == {torch.float16}
    with torch.no_grad():
        assert (logits - model(x)).abs().max() < 1.0  # the same classifier, at float16 resolution


# --------------------------------------------------------------------------------------------------- run, perturb
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fp16_run_and_perturb_agree_with_the_fp16_model(norm, centroid_classifier, synthetic_test, quick_standard):
    model = centroid_classifier
    x, y, seeds = _batch(synthetic_test)
    t = _aa(norm, "fp16")
    entry = ATTACKS.get("autoattack")
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.train()
    try:
        x_adv = entry.perturb(model, x, y, t, seeds)
        assert model.training, "perturb must restore train mode"
        assert [p.requires_grad for p in params] == flags and all(p.grad is None for p in params)
        model.eval()
        robust = entry.run(model, x, y, [t], seeds)[t]
    finally:
        model.eval()
    clean = _fp16_predict(model, x) == y  # clean judged by the fp16 forward
    assert robust.dtype == torch.bool and not torch.any(robust & ~clean)
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.all(size <= t.eps + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = _fp16_predict(model, x_adv) != y
    assert torch.equal(fooled, ~robust)  # misclassified by the fp16 model exactly where run says not robust
    assert torch.equal(x_adv[3], x[3])
    assert 0 < int(robust.sum()) < int(clean.sum()), "both outcomes should occur"


def test_fp16_masks_imply_fp16_clean_correctness_on_a_trap(synthetic_test, quick_standard):
    """A model whose fp16 and fp32 predictions differ: the clean check is the fp16 one."""

    class Fp16Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 10)
            with torch.no_grad():
                self.lin.weight.zero_()
                self.lin.bias.zero_()
                self.lin.bias[0] = 1.0

        def forward(self, x):
            logits = self.lin(x.mean((2, 3)))
            if logits.dtype == torch.float16:  # under fp16 autocast: class 1 wins
                logits = logits + F.one_hot(torch.ones(len(x), dtype=torch.long), 10).to(logits) * 2
            return logits

    model = Fp16Wrong().to(DEVICE)
    x, _, seeds = _batch(synthetic_test, n=4)
    y = torch.zeros(4, dtype=torch.long, device=DEVICE)
    t32, t16 = _aa("linf"), _aa("linf", "fp16")
    out = run_autoattack(model, x, y, [t32, t16], seeds, implementation=COMPONENTS)
    assert out[t32].all()  # the fp32 model is right and, blind to the image, cannot be fooled
    assert not out[t16].any()  # the fp16 model is wrong on every clean image


# ------------------------------------------------------------------------------------------ every forward in fp16
@pytest.mark.parametrize("implementation", [COMPONENTS, OFFICIAL])
def test_every_forward_runs_in_fp16_and_fp32_never_does(
    implementation, centroid_classifier, synthetic_test, quick_standard, monkeypatch, tmp_path
):
    model = centroid_classifier.eval()
    x, y, seeds = _batch(synthetic_test, n=8)
    if implementation == OFFICIAL:
        monkeypatch.setitem(sys.modules, "autoattack", _fake_official())
    wrapped: list[torch.dtype] = []

    class Recording(AutocastForward):
        def forward(self, x):
            out = super().forward(x)
            wrapped.append(out.dtype)
            return out

    monkeypatch.setattr(aa_mod, "AutocastForward", Recording)
    for precision in ("fp16", "fp32"):
        wrapped.clear()
        spy = ForwardSpy(model)
        try:
            t = _aa("linf", precision)
            run_autoattack(model, x, y, [t], seeds, implementation=implementation)
            aa_mod.perturb_autoattack(model, x, y, t, seeds, implementation=implementation)
            if precision == "fp32":  # also inside a caller's float16 autocast region
                with torch.autocast(DEVICE.type, dtype=torch.float16):
                    run_autoattack(model, x, y, [t], seeds, implementation=implementation)
        finally:
            spy.close()
        assert len(spy.calls) >= (8 if implementation == OFFICIAL else 50) and spy.n_linear > 0
        if precision == "fp16":
            assert set(spy.calls) == {(True, torch.float16)}, "every forward under float16 autocast"
            assert spy.linear_dtypes == {torch.float16}
            assert len(wrapped) == len(spy.calls) and set(wrapped) == {torch.float32}, "logits cast to float32"
        else:
            assert {enabled for enabled, _ in spy.calls} == {False}, "fp32: autocast off"
            assert spy.linear_dtypes == {torch.float32} and wrapped == [], "fp32: the model itself, no wrapper"


def _fake_official():
    """A stand-in for fra31/auto-attack: one FGSM step on the per-image cross-entropy of ``model(x)``, as its
    components compute their losses from the logits they get."""

    class AutoAttack:
        def __init__(self, model, norm="Linf", eps=0.3, version="standard", device="cuda", verbose=True, seed=None):
            self.model, self.norm, self.eps = model, norm, eps
            self.attacks_to_run = ["apgd-ce", "apgd-t", "fab-t", "square"]
            self.apgd_targeted = types.SimpleNamespace(n_target_classes=9)
            self.fab = types.SimpleNamespace(n_target_classes=9)
            self.seed = seed

        def run_standard_evaluation(self, x, y, bs=250):
            with torch.no_grad():
                assert self.model(x).dtype == torch.float32
            z = x.clone().requires_grad_(True)
            logits = self.model(z)
            assert logits.dtype == torch.float32
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").sum(), z)
            return (x + self.eps * g.sign()).clamp(0, 1).detach()

    module = types.ModuleType("autoattack")
    module.AutoAttack = AutoAttack
    return module


# ----------------------------------------------------------------------------------------------------- fp32 as is
def test_fp32_results_do_not_depend_on_an_fp16_threat_next_to_it(centroid_classifier, synthetic_test, quick_standard):
    model = centroid_classifier.eval()
    x, y, seeds = _batch(synthetic_test, n=12)
    t32, t16 = _aa("linf"), _aa("linf", "fp16")
    alone = {}
    alone32 = run_autoattack(model, x, y, [t32], seeds, report=alone)[t32]
    alone16 = run_autoattack(model, x, y, [t16], seeds)[t16]
    both = {}
    out = run_autoattack(model, x, y, [t32, t16], seeds, report=both)
    assert torch.equal(out[t32], alone32) and torch.equal(out[t16], alone16)
    for c, mask in alone[t32.slug]["masks"].items():
        assert torch.equal(both[t32.slug]["masks"][c], mask)
    assert "precision" not in alone[t32.slug] and "precision_detail" not in alone[t32.slug]  # fp32 report as before


# ------------------------------------------------------------------------------------------------ refused, reported
def test_bf16_is_still_refused_in_one_line(centroid_classifier, synthetic_test):
    entry = ATTACKS.get("autoattack")
    assert entry.precisions == ("fp32", "fp16")
    x, y, seeds = _batch(synthetic_test, n=4)
    t = _aa("linf", "bf16")
    for call in (
        lambda: entry.run(centroid_classifier, x, y, [t], seeds),
        lambda: entry.perturb(centroid_classifier, x, y, t, seeds),
        lambda: entry.check_precision("bf16"),
    ):
        with pytest.raises(ZSBenchError, match="bf16") as err:
            call()
        assert len(str(err.value).splitlines()) == 1
    entry.check_precision("fp16")  # accepted


def test_the_report_says_fp16_and_what_it_means(centroid_classifier, synthetic_test):
    x, y, seeds = _batch(synthetic_test, n=6)
    t = Threat("autoattack", "linf", 0.0, precision="fp16")  # eps 0: nothing runs, the fp16 clean check decides
    report: dict = {}
    robust = run_autoattack(centroid_classifier, x, y, [t], seeds, report=report)[t]
    assert torch.equal(robust, _fp16_predict(centroid_classifier, x) == y)
    entry = report[t.slug]
    assert t.slug.endswith("-fp16") and t.label.endswith(" fp16")
    assert entry["precision"] == "fp16"
    detail = entry["precision_detail"]
    assert "float16 autocast" in detail and "float32" in detail and "per-image" in detail and "\n" not in detail
    assert aa_mod.run_autoattack.last_report[t.slug]["precision"] == "fp16"
    assert t.settings()["precision"] == "fp16"
