"""``zsbench bench`` on the tiny model: it writes every figure, its FLOP counts add up, the naive baseline computes
what this package computes, and the joint clean + adversarial forward changes nothing but the speed."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from robustbench_zs.attacks import ATTACKS, Threat
from robustbench_zs.attacks.core import eval_mode_no_param_grad
from robustbench_zs.bench import measure
from robustbench_zs.bench.naive import FIXES, NaivePGD, NaiveTraining
from robustbench_zs.bench.runner import class_prompts, random_batch
from robustbench_zs.cli import main
from robustbench_zs.methods import METHODS
from robustbench_zs.methods.base import batch_independent
from robustbench_zs.models import HeadKnobs, ModelSpec, ZeroShotClassifier, build_text_head, load_model
from robustbench_zs.profiles import TRAIN_PROFILES
from robustbench_zs.train.engine import prepare_models, step_loss

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)
CPU = torch.device("cpu")
KNOBS = TRAIN_PROFILES["paper"].head_knobs()  # the benchmark's: the official code's head knobs


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str]:
    """One ``zsbench bench`` on the tiny model (the peak matmul kept small): its JSON and what it printed."""
    out = tmp_path_factory.mktemp("bench") / "tmp.json"
    args = ["bench", "--arch", "zsbench-tiny", "--steps", "2", "--device", "cpu", "--peak-size", "256"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--out", str(out)]) == 0
    return json.loads(out.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def report(bench_run) -> dict:
    return bench_run[0]


def _models(method_id: str):
    """A fresh tiny backbone prepared for ``method_id`` as the engine prepares it, with the benchmark's head."""
    method = METHODS.get(method_id)()
    loaded = load_model(TINY, CPU)
    names, templates = class_prompts()
    head, _ = build_text_head(loaded.model, loaded.tokenizer, names, templates, None)
    return method, loaded, prepare_models(method, loaded, KNOBS, head, CPU)


def test_bench_writes_every_figure(report) -> None:
    machine = report["machine"]
    assert machine["cpu"] and machine["torch"] == torch.__version__ and machine["torch_threads"] >= 1
    settings = report["settings"]
    assert settings["arch"] == "zsbench-tiny" and settings["method"] == "pmg_aft" and settings["batch_size"] == 32
    assert settings["train_attack"] == {"eps_255": 1.0, "steps": 2, "step_size_255": 1.0}
    assert settings["eval_attack"]["steps"] == 10 and settings["joint_forward_used"] is False  # the CPU's default
    assert report["command"].startswith("zsbench bench ") and "--arch zsbench-tiny" in report["command"]
    for dtype in ("fp32", "bf16"):
        assert report["peak"][dtype]["flop_per_second"] > 0 and report["peak"][dtype]["size"] <= 256
    for kind in ("train", "eval"):
        res = report["results"][kind]
        assert res["speedup"] > 0 and res["flops_ratio_naive_over_ours"] > 1
        for who in ("ours", "naive"):
            r = res[who]
            assert len(r["seconds"]) == (2 if who == "ours" else 1), (kind, who)
            assert r["images_per_second"] > 0 and r["flops_per_image"] > 0 and r["flop_per_second"] > 0
            assert 0 < r["fraction_of_fp32_peak"] == r["fraction_of_peak"]
            assert r["flops_per_step"] == pytest.approx(r["flops_per_image"] * 32)


def test_bench_prints_a_table(bench_run) -> None:
    report, printed = bench_run
    speedup = report["results"]["train"]["speedup"]
    assert "ours/naive" in printed and f"{speedup:.2f}x" in printed and "matmul peak: fp32" in printed


def test_flop_counts_add_up(report) -> None:
    """The counted FLOPs per image equal what the steps must compute, from one forward's parts.

    With F a forward, A its attention products (Q K^T and P V), C the patch embedding (a convolution, computed as
    a matrix product) and H the head product: an input gradient costs F + 1.5 A (the attention backward recomputes the scores: 5 products for 2), weight
    gradients F - A - H (the head is a constant). PGD-10: 10 x (F + input gradient) + the verdict forward =
    21 F + 15 A. PMG-AFT's step: 2 attack steps (4 F + 3 A), x' and x forward (2 F) and backward into weights and
    activations but not pixels (2 x (2 F + 0.5 A - C - H)), the frozen forward (F): 11 F + 4 A - 2 C - 2 H. A
    weight gradient computed during an attack, a frozen forward with gradients or a forward run twice would show.
    """
    _, loaded, models = _models("pmg_aft")
    n = 4
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        forward = measure.count_flops(lambda: models.frozen(x))[0] / n
    grad_forward, per_op = measure.count_flops(lambda: models.model(x.clone().requires_grad_(True)))
    # the CPU attention kernels and nn.MultiheadAttention's no-grad fast path are counted like the plain forward
    assert forward == pytest.approx(grad_forward / n, rel=1e-9)
    attention = per_op["aten._scaled_dot_product_flash_attention_for_cpu"] / n
    visual = models.model.visual
    conv = 2 * visual.conv1.weight.numel() * visual.grid_size[0] * visual.grid_size[1]  # the patch embedding
    head = 2 * models.model.head.numel()
    assert attention > 0 and conv > 0
    train = report["results"]["train"]["ours"]["flops_per_image"]
    evaluation = report["results"]["eval"]["ours"]["flops_per_image"]
    assert evaluation == pytest.approx(21 * forward + 15 * attention, rel=1e-6)
    assert train == pytest.approx(11 * forward + 4 * attention - 2 * conv - 2 * head, rel=1e-6)
    assert report["results"]["train"]["naive"]["flops_per_image"] > 2 * train


def test_naive_baseline_computes_the_same_loss(report) -> None:
    assert report["results"]["train"]["loss_relative_difference"] < 1e-5
    names, templates = class_prompts()
    for method_id in ("pmg_aft", "tecoa"):
        method, loaded, models = _models(method_id)
        pristine = load_model(TINY, CPU)
        x, y, seeds = random_batch(16, loaded.image_size, len(names), 3, CPU)
        models.model.train()
        ours, _ = step_loss(method, models, x, y, seeds, method.recipe, "fp32", {"global_batch": 16})
        tokens = pristine.tokenizer([t.format(c) for c in names for t in templates])
        for fixes in ((), FIXES[:1], FIXES):  # the official way, the first rung of the ladder, all of them
            naive = NaiveTraining(
                method, pristine.model, tokens, method.recipe, KNOBS, loaded.image_size, "fp32", CPU, fixes
            )
            loss = float(naive.loss(x, y, seeds).detach())
            assert loss == pytest.approx(float(ours.detach()), rel=1e-5), (method_id, fixes)


def test_naive_pgd_gives_the_same_verdicts() -> None:
    loaded = load_model(TINY, CPU)
    names, templates = class_prompts()
    head, _ = build_text_head(loaded.model, loaded.tokenizer, names, templates, None)
    clf = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, HeadKnobs())
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = clf(x).argmax(dim=1)  # labels the model gets right, so the attack has something to flip
    threat = Threat("pgd", "linf", 4 / 255, 10, 1 / 255)
    with eval_mode_no_param_grad(clf):
        ours = ATTACKS.get("pgd").run(clf, x, y, [threat], torch.arange(24))[threat]
    tokens = loaded.tokenizer([t.format(c) for c in names for t in templates])
    naive = NaivePGD(copy.deepcopy(loaded.model), tokens, HeadKnobs(), loaded.image_size, CPU)
    robust = naive(x, y, torch.arange(24), 4 / 255, 1 / 255, 10)
    assert 0 < int(ours.sum()) < 24
    assert torch.equal(robust, ours)


@pytest.mark.parametrize("method_id", ["pmg_aft", "tecoa"])
def test_joint_forward_changes_nothing_but_the_batching(method_id: str) -> None:
    results = {}
    for joint in (True, False):
        method, loaded, models = _models(method_id)
        batches: list[int] = []
        models.model.visual.register_forward_hook(lambda m, i, o, seen=batches: seen.append(len(i[0])))
        x, y, seeds = random_batch(8, loaded.image_size, 200, 1, CPU)
        models.model.train()
        loss, _ = step_loss(method, models, x, y, seeds, method.recipe, "fp32", {"global_batch": 8}, joint)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in models.encoder.named_parameters() if p.grad is not None}
        results[joint] = (float(loss.detach()), grads, batches)
    (loss_j, grads_j, batches_j), (loss_s, grads_s, batches_s) = results[True], results[False]
    assert loss_j == pytest.approx(loss_s, rel=1e-6, abs=1e-7)
    assert grads_j.keys() == grads_s.keys() and grads_j
    for name in grads_j:
        torch.testing.assert_close(grads_j[name], grads_s[name], rtol=1e-4, atol=1e-6, msg=name)
    if method_id == "pmg_aft":  # two attack steps, then x' and x together (16) instead of one after the other
        assert batches_j == [8, 8, 16] and batches_s == [8, 8, 8, 8]
    else:  # TeCoA has one forward under the model after its attack: nothing to join
        assert batches_j == batches_s == [8, 8, 8]


def test_batch_statistics_keep_separate_forwards() -> None:
    rn = load_model(ModelSpec("zsbench-tiny-rn", "random"), CPU).model.visual
    assert batch_independent(rn.eval()) and not batch_independent(rn.train())
    vit = load_model(TINY, CPU).model.visual.train()
    assert batch_independent(vit)
    vit.transformer.resblocks[0].attn.dropout = 0.1
    assert not batch_independent(vit) and batch_independent(vit.eval())


def test_unknown_method_is_one_line(capsys) -> None:
    assert main(["bench", "--method", "nope", "--arch", "zsbench-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    assert main(["bench", "--method", "clip", "--arch", "zsbench-tiny"]) == 2
    assert "does not train" in capsys.readouterr().err
    assert main(["bench", "--steps", "0", "--arch", "zsbench-tiny"]) == 2
    assert "--steps 0 must be at least 1" in capsys.readouterr().err


def test_bench_times_a_defense_adaptive_and_not(tmp_path, capsys) -> None:
    """``--defense``: the defense's PGD-10 evaluation, non-adaptive and adaptive, timed beside the undefended one in
    the same run, with each one's time relative to it."""
    out = tmp_path / "b.json"
    args = ["bench", "--arch", "zsbench-tiny", "--steps", "1", "--device", "cpu", "--peak-size", "256", "--no-naive"]
    assert main([*args, "--defense", "ttc", "--eot-samples", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["defense"]
    assert res["name"] == "ttc"
    assert res["adaptive"]["evaluation"]["eot_samples"] == 2 and not res["non-adaptive"]["evaluation"]["adaptive"]
    for who in ("adaptive", "non-adaptive"):
        r = res[who]
        assert r["seconds_over_undefended_eval"] > 0 and r["flops_per_image"] > 0
    # the adaptive attack runs the defense (2 draws, its counterattack) at every step: more work per image
    assert res["adaptive"]["flops_per_image"] > 2 * res["non-adaptive"]["flops_per_image"]
    assert "PGD-10 eval of ttc" in capsys.readouterr().out
    assert main([*args, "--defense", "tecoa"]) == 2
    assert "is not a test-time defense" in capsys.readouterr().err


def test_readme_performance_table_is_the_committed_results() -> None:
    """The README's table is ``benchmarks/summarize.py``'s output for the JSONs in ``benchmarks/results/``."""
    from pathlib import Path

    from robustbench_zs.bench import markdown_summary

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "benchmarks" / "results").glob("bench-*.json"))
    assert files, "no committed benchmark results"
    reports = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    for rep in reports:  # each says what it ran on and how
        assert rep["machine"]["cpu"] and rep["command"].startswith("zsbench bench") and rep["software"]["torch"]
    readme = (root / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- bench-table:start -->\n", 1)[1].split("\n<!-- bench-table:end -->", 1)[0]
    assert table == markdown_summary(reports)


def _benchmark_script(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_precision_verdicts_pairs_the_fp32_and_bf16_records_of_one_folder(tmp_path, capsys) -> None:
    """``benchmarks/precision_verdicts.py`` (the bf16 check of the GPU script) pairs records that differ only in the
    attack's precision, image by image, and says when there is nothing to pair."""
    verdicts = _benchmark_script("precision_verdicts")
    out = tmp_path / "out"
    args = ["run", "--methods", "clip", "--datasets", "synthetic", "--n", "32", "--attack", "pgd", "--steps", "2"]
    args += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert verdicts.main([str(out)]) == 2  # fp32 alone: no pair
    assert "no fp32/bf16 pair" in capsys.readouterr().err
    assert main([*args, "--attack-precision", "bf16", "--eps", "1,2"]) == 0
    rows = verdicts.compare(out)
    assert [(r["threat"], r["n"]) for r in rows] == [("PGD-2 L∞ ε=1/255", 32)]  # eps 2/255 has no fp32 twin
    (row,) = rows
    assert row["fp32_only_robust"] + row["bf16_only_robust"] == round((1 - row["agreement"]) * 32)
    assert row["bf16_inside_fp32_ci"] == (row["fp32_ci95"][0] <= row["bf16"] <= row["fp32_ci95"][1])
    code = verdicts.main([str(out), "--json", str(tmp_path / "v.json")])
    assert code == (0 if row["bf16_inside_fp32_ci"] else 1)
    assert json.loads((tmp_path / "v.json").read_text())["pairs"] == rows
    assert f"{int(row['bf16_inside_fp32_ci'])} of 1 pairs inside the fp32 interval" in capsys.readouterr().out
