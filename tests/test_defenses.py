"""Test-time defenses: the adaptive evaluation sees the defense (toy defenses with known answers), its gradient is
the unrolled defense's (finite differences), records say how each number was attacked, and the leaderboard never
ranks a non-adaptive number beside the others without its mark."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_defenses import GradientPurifier, PurifyConfig, RandomDihedral, ToyDihedral, ToyQuantize

from robustbench_zs.attacks import Threat
from robustbench_zs.cli.main import main
from robustbench_zs.datasets.subset import select_subset
from robustbench_zs.engine.evaluator import evaluate
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.methods import METHODS
from robustbench_zs.methods.defense import EOT, DefenseMethod, HeldSteps
from robustbench_zs.methods.ttc import TTC, Counterattack, TTCConfig
from robustbench_zs.models import ModelSpec
from robustbench_zs.report import write_leaderboard

pytestmark = pytest.mark.usefixtures("one_thread")

EPS8 = Threat("pgd", "linf", 8 / 255, 10, 2 / 255)


def _blocks(method: type[DefenseMethod], eot: int | None = None) -> dict:
    return {m: method.evaluation_block(m, eot) for m in ("adaptive", "non_adaptive")}


def test_adaptive_attack_sees_a_randomized_defense(centroid_classifier, synthetic_test):
    """A random flip/transpose defeats perturbations made for the undefended model (the papers' protocol), but not
    an attack that differentiates through the defense with EOT over its draws. Measured on 64 images: clean 89%,
    non-adaptive 70%, adaptive 23%, undefended 0%."""
    defense = RandomDihedral(centroid_classifier, ToyDihedral.Config()).eval()
    subset = select_subset(len(synthetic_test), 64, 0)
    acc = {}
    for mode, block in _blocks(ToyDihedral, eot=10).items():
        res = evaluate(defense, synthetic_test, [EPS8], subset=subset, batch_size=64, evaluation=block, progress=False)
        acc[mode], clean = res.accuracy(EPS8), res.accuracy()
        assert not res.above_clean[EPS8].any()
    plain = evaluate(centroid_classifier, synthetic_test, [EPS8], subset=subset, batch_size=64, progress=False)
    assert clean >= 0.8 and plain.accuracy(EPS8) <= 0.05
    assert acc["non_adaptive"] >= 0.55, acc
    assert acc["adaptive"] <= acc["non_adaptive"] - 0.3, acc


def test_a_randomized_defense_is_reproduced_per_batch_and_seed(centroid_classifier, synthetic_test):
    defense = RandomDihedral(centroid_classifier, ToyDihedral.Config()).eval()
    subset = select_subset(len(synthetic_test), 48, 0)
    block = ToyDihedral.evaluation_block("adaptive", 2)
    runs = [
        evaluate(defense, synthetic_test, [EPS8], subset=subset, batch_size=16, evaluation=block, progress=False)
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].clean, runs[1].clean)
    assert np.array_equal(runs[0].robust[EPS8], runs[1].robust[EPS8])
    # a clean pass supplied by an earlier record leaves the attack's draws as they were
    resumed = evaluate(
        defense,
        synthetic_test,
        [EPS8],
        subset=subset,
        batch_size=16,
        evaluation=block,
        progress=False,
        clean=runs[0].clean,
    )
    assert np.array_equal(resumed.robust[EPS8], runs[0].robust[EPS8])


def test_eot_is_the_log_of_the_mean_softmax(centroid_classifier, synthetic_test):
    defense = RandomDihedral(centroid_classifier, ToyDihedral.Config()).eval()
    x = synthetic_test.images[:4].float() / 255
    defense.reseed(3)
    got = EOT(defense, 5)(x)
    defense.reseed(3)
    draws = torch.softmax(defense(x.repeat(5, 1, 1, 1)), dim=-1).view(5, 4, -1)
    assert torch.allclose(got.exp(), draws.mean(0), atol=1e-6)
    assert EOT(defense, 1)(x).shape == (4, 10)


def _directional(f, x: torch.Tensor, v: torch.Tensor, h: float = 1e-5) -> float:
    with torch.no_grad():
        return float((f(x + h * v) - f(x - h * v)) / (2 * h))


def test_the_unrolled_gradient_matches_finite_differences(tiny):
    """The gradient of a smooth purifier's output, taken through its unrolled steps (second order, attention's math
    kernel), equals central finite differences in float64; the same steps held constant (the official CLIPure code's
    way) do not: the test can tell them apart."""
    from robustbench_zs.models import NORMALIZATIONS, ZeroShotClassifier

    torch.manual_seed(0)
    mean, std = NORMALIZATIONS["clip"]
    head = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    visual = copy.deepcopy(tiny.model.visual)  # the session's model stays float32
    clf = ZeroShotClassifier(visual, head, tiny.image_size, mean, std, 30.0).double().eval()
    defense = GradientPurifier(clf, PurifyConfig(steps=2, lr=0.5)).double().eval()
    x = torch.rand(2, 3, *tiny.image_size, dtype=torch.float64)
    v = torch.randn_like(x)
    w = torch.randn(2, 5, dtype=torch.float64)

    def f(z):
        return (defense(z) * w).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg), xg)
    fd = _directional(f, x, v)
    assert float((grad * v).sum()) == pytest.approx(fd, rel=1e-5)

    held = HeldSteps(defense)
    (grad_held,) = torch.autograd.grad((held(xg) * w).sum(), xg)
    assert torch.equal(held(x), defense(x))  # the same forward: only the attack's gradient differs
    assert float((grad_held * v).sum()) != pytest.approx(fd, rel=1e-2)


def test_ttc_follows_the_official_weights_gate_and_budget(centroid_classifier, synthetic_test):
    x = synthetic_test.images[:8].float() / 255
    cfg = TTCConfig()
    w = torch.softmax(cfg.beta * torch.arange(cfg.steps + 1.0), 0)
    assert w.tolist() == pytest.approx([0.0159, 0.1173, 0.8668], abs=1e-4)  # the official weights at beta 2, 2 steps
    seen = {}

    class Spy(Counterattack):
        def defend(self, x):
            out = super().defend(x)
            seen["x"] = x
            return out

    # the classified image stays in the counterattack's 4/255 ball and in [0, 1]
    embed = centroid_classifier.embed
    calls = []
    centroid_classifier.embed = lambda z: (calls.append(z.detach().clone()), embed(z))[1]
    try:
        d = Spy(centroid_classifier, cfg).eval()
        d.reseed(0)
        d(x)
    finally:
        del centroid_classifier.embed
    final = calls[-1]
    assert (final - x).abs().max() <= 4 / 255 + 1e-6 and final.min() >= 0 and final.max() <= 1
    # threshold 0: no image is counterattacked, the random start alone is classified; steps make no difference
    d0, d2 = (Counterattack(centroid_classifier, TTCConfig(tau_thres=0.0, steps=s)).eval() for s in (0, 2))
    d0.reseed(1)
    d2.reseed(1)
    assert torch.allclose(d0(x), d2(x), atol=1e-5)


def test_ttc_adaptive_gradient_is_finite_and_reaches_the_gate(centroid_classifier, synthetic_test):
    x = (synthetic_test.images[:4].float() / 255).requires_grad_(True)
    d = Counterattack(centroid_classifier, TTCConfig()).eval()
    d.reseed(0)
    loss = torch.nn.functional.cross_entropy(EOT(d, 3)(x), synthetic_test.labels[:4])
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert TTC.defense_block() == {
        "name": "ttc",
        "randomized": True,
        "inference_optimization": True,
        "bpda": {"tau_gate": "sigmoid((tau_thres - tau) / 0.02)"},
    }


@pytest.fixture
def toys(monkeypatch):
    for cls in (ToyDihedral, ToyQuantize):
        monkeypatch.setitem(METHODS._entries, cls.id, cls)
        monkeypatch.setitem(METHODS._origin, cls.id, "tests")


def _world_run(tmp_path: Path, methods, **kw) -> Path:
    out = tmp_path / "out"
    cfg = RunConfig(
        methods=methods,
        datasets=("world-shape",),
        model=ModelSpec("zsbench-world", "world"),
        threats=(Threat("pgd", "linf", 4 / 255, 10, 1 / 255),),
        data_root=tmp_path / "data",
        out_dir=out,
        cache_dir=tmp_path / "cache",
        n=64,
        device="cpu",
        progress=False,
        batch_size=64,
        **kw,
    )
    run(cfg, echo=lambda s: None)
    return out


def test_gradient_masking_defense_is_flagged_and_non_adaptive_rows_are_marked(tmp_path, toys):
    """On the world model: a quantizing defense masks the gradient, so its adaptive attack does worse than the
    transfer attack (flagged); each defense gets one clean record for both evaluations; the non-adaptive rows come
    last with their mark."""
    out = _world_run(tmp_path, ("clip", "toy_quantize"))
    records = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    quant = [r for r in records if r["method"] == "toy_quantize"]
    assert sorted(r["method_label"] for r in quant) == ["toy_quantize", "toy_quantize", "toy_quantize (non-adaptive)"]
    clean = [r for r in quant if r["attack"]["name"] == "clean"]
    assert len(clean) == 1 and "evaluation" not in clean[0] and clean[0]["defense"]["randomized"] is False
    by_mode = {r["evaluation"]["adaptive"]: r for r in quant if r["attack"]["name"] != "clean"}
    assert by_mode[True]["evaluation"] == {"adaptive": True, "attack_on": "defense", "eot_samples": 1, "bpda": {}}
    assert by_mode[False]["evaluation"]["attack_on"] == "undefended"
    assert by_mode[True]["result"]["accuracy"] > by_mode[False]["result"]["accuracy"]
    assert "zero-grad" in by_mode[True]["sanity"]["flags"]
    board = write_leaderboard(out)["markdown"].read_text()
    table = board.split("## PGD-10")[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "·" in line]
    assert rows[-1].startswith("toy_quantize (non-adaptive)") and rows[-1].endswith("‡")
    assert "adaptive>non-adaptive" in table and "‡ marks a test-time defense attacked non-adaptively" in table


def test_only_non_adaptive_is_said_and_eot_runs_are_compared(tmp_path, toys):
    out = _world_run(tmp_path, ("toy_dihedral",), defense_eval=("non_adaptive",))
    board = write_leaderboard(out)["markdown"].read_text()
    assert "No adaptive evaluation in this table for toy_dihedral" in board
    for eot in (1, 4):
        _world_run(tmp_path, ("toy_dihedral",), defense_eval=("adaptive",), eot_samples=eot)
    csv = (out / "leaderboard.csv").read_text()
    write_leaderboard(out)
    from robustbench_zs.report.leaderboard import cross_record_checks, records_frame

    checks = cross_record_checks(records_frame(out))
    names = {c["name"] for c in checks["check"]}
    assert {"robust_rises_with_eot_samples", "adaptive_above_non_adaptive"} <= names
    assert csv


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--defense-eval", "sometimes"], "--defense-eval sometimes"),
        (["--defense-eval", "adaptive,adaptive"], "each once"),
        (["--defense-eval", ""], "--defense-eval"),
        (["--eot-samples", "0"], "--eot-samples"),
        (["--eot-samples", "2.5"], "--eot-samples"),
        (["--eot-samples", "1e9"], "--eot-samples"),
        (["--batch-size", "auto"], "depend on the batch"),
        (["--set", "ttc.steps=-1"], "ttc steps"),
        (["--set", "ttc.eps_255=nan"], "ttc eps_255"),
        (["--set", "ttc.beta=inf"], "ttc beta"),
        (["--set", "ttc.eps_255=300"], "at most 255"),
        (["--set", "ttc.lr=1"], "no option 'lr'"),
        (["--methods", "clip", "--defense-eval", "adaptive"], "--defense-eval applies to a test-time defense"),
        (["--methods", "clip,tecoa", "--eot-samples", "5"], "--eot-samples applies to a randomized"),
        (["--methods", "clipure", "--eot-samples", "5"], "--eot-samples applies to a randomized"),
        (["--checkpoint", "ttc=."], "ttc trains nothing"),
    ],
)
def test_bad_defense_input_is_one_line(tmp_path, capsys, argv, needle):
    if "--methods" not in argv:
        argv = ["--methods", "ttc", *argv]
    code = main(["run", "--preset", "smoke", "--n", "4", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_ttc_runs_end_to_end_with_both_evaluations(tmp_path, capsys, quick_standard):
    argv = ["run", "--preset", "smoke", "--attack", "pgd,autoattack", "--eps", "1", "--n", "8", "--eot-samples", "2"]
    argv += ["--out", str(tmp_path / "r")]
    code = main([*argv, "--methods", "clip,ttc"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").rglob("ttc/**/*.json")]
    robust = [r for r in records if r["attack"]["name"] != "clean"]
    assert sorted((r["attack"]["name"], r["evaluation"]["adaptive"]) for r in robust) == [
        ("autoattack", False),
        ("autoattack", True),
        ("pgd", False),
        ("pgd", True),
    ]
    assert all(r["evaluation"]["eot_samples"] == (2 if r["evaluation"]["adaptive"] else 1) for r in robust)
    assert all(r["defense"]["randomized"] and r["defense"]["inference_optimization"] for r in records)
    board = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "ttc (non-adaptive) · zsbench-tiny/random(seed=0) ‡" in board
    # the records of one evaluation are found again: a second run computes nothing
    assert main([*argv, "--methods", "ttc"]) == 0
    assert "0 written" in capsys.readouterr().out


def test_the_docs_example_defense_runs_both_evaluations(tmp_path, monkeypatch):
    """docs/test_time_defenses.md's example defense, executed as written, registered, and evaluated by the engine."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "test_time_defenses.md").read_text(encoding="utf-8")
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "test_time_defenses.md", "exec"), namespace)
    cls = namespace["Noise"]
    monkeypatch.setitem(METHODS._entries, cls.id, cls)
    monkeypatch.setitem(METHODS._origin, cls.id, "tests")
    out = _world_run(tmp_path, ("noise",), eot_samples=2)
    labels = sorted(json.loads(p.read_text())["method_label"] for p in (out / "records").rglob("*.json"))
    assert labels == ["noise", "noise (EOT-2)", "noise (non-adaptive)"]


def test_the_python_api_returns_the_defended_classifier(synthetic_test):
    from robustbench_zs import create_classifier
    from robustbench_zs.errors import ZSBenchError

    names = list(synthetic_test.classnames)
    clf = create_classifier(names, ["a photo of a {}."], ModelSpec("zsbench-tiny", "random"), method="ttc")
    assert isinstance(clf, Counterattack)
    x = synthetic_test.images[:4].float() / 255
    clf.reseed(0)
    assert clf(x).shape == (4, len(names))
    with pytest.raises(ZSBenchError, match="evaluation_block"):
        evaluate(clf, synthetic_test, [EPS8], subset=select_subset(len(synthetic_test), 4, 0), progress=False)
