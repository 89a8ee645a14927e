"""The paper profile end to end (issue 14): train and evaluate as the official PMG-AFT code did, and say so.

Each test pins one of the seven differences an audit found between our `paper` plan and the official code
(serendipity1122/Pre-trained-Model-Guided-Fine-Tuning-for-Zero-Shot-Adversarial-Robustness, ``PMG_AFT.py``):

1. PMG-AFT's loss options under the paper profile: the published KL direction and summed KL;
2. the training resolution per training set (CIFAR-100 trained at 224 px);
3. the paper subsample counted in the official loader's order (``tests/test_paper_subsample_order.py`` for the
   orders; here: ``zsbench run`` uses it);
4. fp16 records keyed on the batch size, and ``reproduce`` at the official batch of 256;
5. the visual prompts (``tests/test_prompts_twins.py``);
6. a training profile: ``zsbench train --profile paper``, every knob in ``meta.json`` and in the records, flagged in
   the leaderboard when training and evaluation disagree;
7. the last partial batch, the model's mode during the training attack, and RobustVLM's momentum PGD for FARE.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dataset_fixtures import default_tinyimagenet_wnids
from PIL import Image
from torch import nn

from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS, synthetic
from robustbench_zs.datasets.preprocess import resolve_preprocess
from robustbench_zs.datasets.subset import paper_subsample, paper_subsample_of
from robustbench_zs.methods import METHODS
from robustbench_zs.methods.base import Recipe
from robustbench_zs.paper.plan import plan
from robustbench_zs.paper.targets import targets
from robustbench_zs.profiles import PROFILES, TRAIN_PROFILES, train_profile_for
from robustbench_zs.train.engine import effective_profile, make_attack, steps_per_epoch

TINY_ARGS = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
PAPER_KNOBS = {k: v for k, v in TRAIN_PROFILES["paper"].to_dict().items()}


@pytest.fixture
def small_train(monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "train", 100)  # 100 images: one full batch of 64 and a partial one of 36


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


# --- 1 and 4: the plan of reproduce -------------------------------------------------------------------------------


def test_reproduce_dry_run_json_is_the_official_plan(tmp_path, capsys) -> None:
    argv = ["reproduce", "table1", "--dry-run", "--json", "--out", str(tmp_path / "r"), "--models-dir", str(tmp_path)]
    assert main([*argv, "--profile", "paper"]) == 0
    doc = _json_out(capsys)
    assert doc["batch_size"] == 256 and doc["train_profile"] == PAPER_KNOBS
    runs = {(r["method"], r["evaluation"]["dataset"]): r for r in doc["runs"]}
    assert len(runs) == 6 * 16  # every row on every dataset, listed whether a record exists or not
    pmg = runs[("pmg_aft", "tinyimagenet")]
    assert pmg["options"] == {"kl_direction": "published", "kl_reduction": "sum"}
    assert pmg["method_config"]["kl_direction"] == "published" and pmg["method_config"]["kl_reduction"] == "sum"
    assert "4baf55d" in pmg["official_source"] and "reduction='sum'" in pmg["official_source"]
    training = pmg["training"]
    assert training["knobs"] == PAPER_KNOBS
    assert training["recipe"]["batch_size"] == 256 and training["recipe"]["lr"] == 5e-5
    assert training["steps_per_epoch"] == 391 and training["total_steps"] == 3910  # drop_last=False: 100,000 / 256
    assert training["preprocess"]["resize"] == 256 and training["preprocess"]["crop"] == [224, 224]
    evaluation = pmg["evaluation"]
    assert evaluation["batch_size"] == 256 and evaluation["profile"]["attack_precision"] == "fp16"
    clean, pgd = evaluation["threats"]
    assert clean == {"name": "clean"}
    assert pgd["precision"] == "fp16" and pgd["attack_batch_size"] == 256 and pgd["loss_reduction"] == "mean"
    assert runs[("pmg_aft", "cifar10")]["evaluation"]["preprocess"]["attack_resolution"] == "32x32"
    # the official options are PMG-AFT's; TeCoA and the baselines have none
    tecoa = runs[("tecoa", "cifar10")]
    assert tecoa["options"] == {} and tecoa["official_options"] == {} and tecoa["training"]["knobs"] == PAPER_KNOBS
    assert runs[("vp_pmg_aft", "cifar10")]["options"]["kl_reduction"] == "sum"
    assert "not published" in runs[("vp_pmg_aft", "cifar10")]["official_note"]
    assert runs[("clip", "cifar10")]["training"] is None

    assert main([*argv, "--profile", "standard"]) == 0
    doc = _json_out(capsys)
    pmg = {(r["method"], r["evaluation"]["dataset"]): r for r in doc["runs"]}[("pmg_aft", "cifar10")]
    assert pmg["options"] == {} and pmg["method_config"]["kl_direction"] == "current"
    assert pmg["training"]["knobs"] == TRAIN_PROFILES["standard"].to_dict()
    assert pmg["training"]["steps_per_epoch"] == 390  # standard: full batches only
    assert "attack_batch_size" not in pmg["evaluation"]["threats"][1]  # fp32 results do not depend on the batch


def test_every_pmg_aft_row_takes_the_official_options_under_paper_only() -> None:
    for t in targets().values():
        for profile, official in (("paper", True), ("standard", False)):
            for cell in plan(t.id, profile):
                if cell.method not in ("pmg_aft", "vp_pmg_aft"):
                    assert ("kl_reduction", "sum") not in cell.options
                    continue
                opts = dict(cell.options)
                if official:
                    assert opts["kl_direction"] == "published" and opts["kl_reduction"] == "sum", (t.id, cell.row)
                else:
                    assert "kl_direction" not in opts and "kl_reduction" not in opts, (t.id, cell.row)
    ablation = next(r for r in targets()["table5"].rows if r.key == "l2_output")
    assert "not published" in ablation.official_note and ablation.option_dict() == {"distance": "l2_output"}


def test_table3_autoattack_runs_fp16_under_the_paper_profile() -> None:
    threats = {c.threat for c in plan("table3", "paper") if c.metric == "robust"}
    assert {t.precision for t in threats} == {"fp16"} and {t.name for t in threats} == {"autoattack"}
    assert {t.precision for c in plan("table3", "standard") if c.metric == "robust" for t in [c.threat]} == {"fp32"}


def test_fp16_records_are_keyed_on_the_batch_size(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    base = ["run", "--datasets", "synthetic", "--n", "32", "--attack", "pgd", "--steps", "2", "--out", str(out)]
    base += TINY_ARGS

    def pgd_records(precision: str) -> list[dict]:
        paths = (out / "records" / "clip" / "synthetic").glob("pgd-*.json")
        return [r for p in paths if (r := json.loads(p.read_text()))["attack"]["precision"] == precision]

    for batch in ("8", "32"):
        assert main([*base, "--attack-precision", "fp16", "--batch-size", batch]) == 0
    fp16 = pgd_records("fp16")
    assert sorted(r["attack"]["attack_batch_size"] for r in fp16) == [8, 32]
    assert len({r["record_key"] for r in fp16}) == 2
    for batch in ("8", "32"):
        assert main([*base, "--batch-size", batch]) == 0
    assert "(0 written, 2 already there)" in capsys.readouterr().out  # fp32 at batch 32 reused batch 8's records
    (fp32,) = pgd_records("fp32")
    assert "attack_batch_size" not in fp32["attack"]


# --- 6: the training profile, its record, and the leaderboard flag --------------------------------------------------


def _train(tmp_path: Path, method: str, profile: str, *extra: str) -> Path:
    argv = ["train", "--method", method, "--train-dataset", "synthetic", "--data-root", str(tmp_path)]
    argv += ["--out", str(tmp_path / "models"), "--epochs", "1", "--batch-size", "64", "--profile", profile]
    assert main([*argv, *TINY_ARGS, *extra]) == 0
    return max((tmp_path / "models").glob(f"{method}-*"), key=lambda p: p.stat().st_mtime)


def test_paper_training_profile_stores_every_knob(tmp_path, small_train, capsys) -> None:
    folder = _train(tmp_path, "pmg_aft", "paper")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["train_profile"] == PAPER_KNOBS
    assert meta["precision"] == "fp16" and meta["prompts"] == "paper" and meta["preprocess"] == "paper"
    assert meta["config"]["kl_direction"] == "published" and meta["config"]["kl_reduction"] == "sum"
    assert meta["steps_per_epoch"] == 2 and meta["last_batch_size"] == 36 and meta["steps"] == 2  # 64 + 36
    assert meta["recipe"]["train_attack"] == "pgd" and meta["train_preprocess"]["attack_resolution"] == "32x32"

    # an option given explicitly wins over the official one; every knob has a flag, and changing one says custom
    folder = _train(tmp_path, "pmg_aft", "paper", "--set", "kl_direction=current", "--precision", "fp32")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["config"]["kl_direction"] == "current" and meta["config"]["kl_reduction"] == "sum"
    assert meta["train_profile"] == {**PAPER_KNOBS, "name": "custom", "precision": "fp32"}

    folder = _train(tmp_path, "pmg_aft", "standard")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["train_profile"] == TRAIN_PROFILES["standard"].to_dict()
    assert meta["config"]["kl_direction"] == "current" and meta["steps_per_epoch"] == 1  # the partial batch dropped

    # the records evaluated with a checkpoint carry the knobs it was trained with
    out = tmp_path / "out"
    argv = ["run", "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={folder}", "--datasets", "synthetic"]
    assert main([*argv, "--attack", "none", "--n", "16", "--out", str(out), *TINY_ARGS]) == 0
    (record,) = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert record["model"]["training"]["knobs"] == TRAIN_PROFILES["standard"].to_dict()


def test_checkpoint_trained_standard_evaluated_paper_is_flagged(tmp_path, small_train, capsys) -> None:
    standard, paper = _train(tmp_path, "tecoa", "standard"), _train(tmp_path, "tecoa", "paper")
    out = tmp_path / "out"
    for folder in (standard, paper):
        argv = ["run", "--methods", "tecoa", "--checkpoint", f"tecoa={folder}", "--datasets", "synthetic"]
        assert main([*argv, "--profile", "paper", "--attack", "none", "--out", str(out), *TINY_ARGS]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--out", str(out)]) == 0
    md = (out / "leaderboard.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| tecoa")]
    assert len(rows) == 2, rows
    flagged = [r for r in rows if "⚑" in r]
    assert len(flagged) == 1  # only the checkpoint trained under standard; the paper-trained one is consistent
    assert "normalization: trained clip, evaluated imagenet" in md and "logit_scale: trained 100, evaluated 1" in md
    assert "do not rank with the other rows" in md
    csv = (out / "leaderboard.csv").read_text()
    assert "normalization: trained clip, evaluated imagenet" in csv

    # zsbench run picks (or trains) a checkpoint trained with its own profile's knobs, never the other one
    argv = ["run", "--methods", "tecoa", "--datasets", "synthetic", "--attack", "none", "--n", "16"]
    argv += ["--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "out2"), "--no-train-missing"]
    assert main([*argv, "--profile", "standard", *TINY_ARGS]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out2" / "records").rglob("*.json")]
    assert record["model"]["checkpoint_name"] == standard.name


def test_run_without_a_checkpoint_of_its_profile_says_which_exist(tmp_path, small_train, capsys) -> None:
    standard = _train(tmp_path, "tecoa", "standard")
    capsys.readouterr()
    argv = ["run", "--methods", "tecoa", "--datasets", "synthetic", "--attack", "none", "--n", "16", "--profile"]
    argv += ["paper", "--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "o"), "--no-train-missing"]
    assert main([*argv, *TINY_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training profile paper" in err and standard.name in err, err


def test_training_profile_follows_the_evaluation_profile() -> None:
    assert train_profile_for(PROFILES["paper"]) == TRAIN_PROFILES["paper"]
    assert train_profile_for(PROFILES["standard"]) == TRAIN_PROFILES["standard"]
    subsample = PROFILES["paper"].with_overrides(paper_subsample=True)
    assert subsample.name == "custom" and train_profile_for(subsample) == TRAIN_PROFILES["paper"]
    custom = PROFILES["standard"].with_overrides(normalization="imagenet")
    assert train_profile_for(custom).normalization == "imagenet" and train_profile_for(custom).name == "custom"


# --- 2: the training resolution per training set --------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, train, size",
    [
        ("cifar100", True, (224, 224)),
        ("cifar100", False, None),
        ("cifar10", True, None),
        ("tinyimagenet", True, (224, 224)),
    ],
)
def test_paper_training_resolution_per_training_set(dataset, train, size) -> None:
    """PMG_AFT.py: CIFAR100(train=True, transform=preprocess224), CIFAR10 with ToTensor only, TinyImageNet with
    Resize(256) + CenterCrop(224); CIFAR's test splits are attacked at 32 px."""
    spec = DATASETS.get(dataset)
    pre = resolve_preprocess("paper", spec, train=train)
    assert pre.crop == size and (size is None or (pre.resize, pre.interpolation) == (256, "bilinear"))


# --- 7: epoch length, the training attack's mode, reduction and rule ------------------------------------------------


def test_epoch_length_keeps_the_last_partial_batch() -> None:
    assert steps_per_epoch(100_000, 256, "keep") == 391 and steps_per_epoch(100_000, 256, "drop") == 390
    assert steps_per_epoch(50_000, 256, "keep") == 196 and steps_per_epoch(512, 256, "keep") == 2
    assert steps_per_epoch(257, 256, "keep", world_size=2) == 1  # one image cannot be shared by two processes


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_attack_mode_train_lets_the_attack_move_batchnorm_statistics() -> None:
    """The official code attacks with ``model.visual.train()``: BatchNorm normalizes with batch statistics and updates
    its running ones at every attack forward. ``eval`` leaves them alone. Either way the mode is restored."""
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    recipe = Recipe(train_eps_255=4, train_steps=2)
    for mode, moves in (("train", True), ("eval", False)):
        model = _bn_model().train()
        before = model[1].running_mean.clone()
        attack = make_attack(model, x, torch.arange(8), recipe, "fp32", "sum", mode)
        attack(lambda xa, m=model: F.cross_entropy(m(xa), y, reduction="none"))
        assert model.training and (not torch.equal(model[1].running_mean, before)) == moves, mode
    for method, mode in (("fare", "eval"), ("twins", "eval"), ("tecoa", "train"), ("pmg_aft", "train")):
        assert effective_profile(METHODS.get(method), TRAIN_PROFILES["paper"]).attack_mode == mode


def test_mean_attack_loss_underflows_in_fp16_as_the_official_attack() -> None:
    """The official training attack ascends ``CrossEntropyLoss()`` (a batch mean) under fp16 autocast: each image's
    logit gradient is divided by the batch size before its cast to fp16, and small ones flush to zero, so fewer
    pixels move. In fp32 the mean and the sum give the same sign steps. Measured on this linear model at batch 256:
    fp16 moves 245 images with the sum and 214 with the mean; fp32 moves all 256 either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        model[1].weight.mul_(60)  # confident logits: small (p - y)
    x = torch.rand(256, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)

    def moved(precision: str, reduction: str) -> tuple[torch.Tensor, int]:
        start = Recipe(train_eps_255=4, train_steps=1, train_step_size_255=0.0)
        step = Recipe(train_eps_255=4, train_steps=1, train_step_size_255=1.0)
        loss = lambda xa: F.cross_entropy(model(xa).float(), y, reduction="none")  # noqa: E731
        x0 = make_attack(model, x, torch.arange(256), start, precision, reduction)(loss)
        x1 = make_attack(model, x, torch.arange(256), step, precision, reduction)(loss)
        return x1, int((x0 != x1).flatten(1).any(1).sum())

    (a, n_sum), (b, n_mean) = moved("fp32", "sum"), moved("fp32", "mean")
    assert torch.equal(a, b) and n_sum == n_mean == 256
    (_, n_sum), (_, n_mean) = moved("fp16", "sum"), moved("fp16", "mean")
    assert n_mean <= n_sum - 15, (n_sum, n_mean)


def test_fare_training_attack_is_robustvlms_momentum_pgd() -> None:
    """RobustVLM's train/pgd_train.py, written out independently: the first forward sees the unclipped uniform
    start; then v = sign(0.9 v + sign(g)), delta = clip(delta + step * v, -eps, eps), clipped to the image."""
    from robustbench_zs.attacks.core import unit_noise

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    x = torch.rand(5, 3, 4, 4)
    x[0] = 0.0  # at the edge of the pixel range: the unclipped start leaves [0, 1]
    target = torch.randn(5, 6)
    loss = lambda xa: (model(xa) - target).pow(2).sum(1)  # noqa: E731
    recipe = dict(train_eps_255=4.0, train_steps=4, train_step_size_255=1.0)
    seen: list[torch.Tensor] = []

    def spy(xa):
        seen.append(xa.detach().clone())
        return loss(xa)

    ours = make_attack(model, x, torch.arange(5), Recipe(**recipe, train_attack="pgd_momentum"), "fp32")(spy)
    eps, step = 4 / 255, 1 / 255
    delta = unit_noise((3, 4, 4), torch.arange(5), x.device, "linf") * eps
    assert (seen[0] < 0).any() and torch.equal(seen[0], x + delta)  # not clipped before the first forward
    v = torch.zeros_like(x)
    for _ in range(4):
        d = delta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(x + d).sum(), d)
        v = (0.9 * v + g.sign()).sign()
        delta = ((x + (delta + step * v).clamp(-eps, eps)).clamp(0, 1) - x).detach()
    assert torch.allclose(ours, x + delta, atol=1e-7)

    seen.clear()
    make_attack(model, x, torch.arange(5), Recipe(**recipe), "fp32")(spy)
    assert seen[0].min() >= 0  # TeCoA/PMG-AFT: the start is clipped to the image first
    assert METHODS.get("fare").recipe.train_attack == "pgd_momentum"


# --- 3: zsbench run counts the paper subsample in the official order --------------------------------------------------


def test_run_paper_subsample_uses_the_official_order(tmp_path, capsys) -> None:
    base = tmp_path / "data" / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    wnids = default_tinyimagenet_wnids()
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 60, 30)).save(buf, format="JPEG")
    lines = []
    for i in range(600):  # kept: official batch 0 of 256, a few classes of the (wnid, file name) order
        (base / "val" / "images" / f"val_{i}.JPEG").write_bytes(buf.getvalue())
        lines.append(f"val_{i}.JPEG\t{wnids[(i * 37) % 200]}\t0\t0\t7\t7\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tmp_path / "data", "val")
    want, naive = paper_subsample_of(spec, data), paper_subsample(len(data))
    assert want.sha256 != naive.sha256
    argv = ["run", "--datasets", "tinyimagenet", "--data-root", str(tmp_path / "data"), "--paper-subsample"]
    assert main([*argv, "--attack", "none", "--out", str(tmp_path / "out"), "--profile", "paper", *TINY_ARGS]) == 0
    assert "official loader's order: imagefolder" in capsys.readouterr().out
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").rglob("*.json")]
    assert record["dataset"]["indices_sha256"] == want.sha256 and record["dataset"]["n"] == 256
    assert record["dataset"]["paper_order"].startswith("imagefolder")


def test_train_eval_differences_name_every_shared_knob_and_skip_unused_ones() -> None:
    from robustbench_zs.profiles import train_eval_differences

    evaluated = {
        "normalization": "imagenet",
        "logit_scale": "1",
        "prompts": "paper",
        "preprocess": {"profile": "paper"},
    }
    standard = TRAIN_PROFILES["standard"].to_dict()
    assert train_eval_differences(standard, evaluated) == [
        "normalization: trained clip, evaluated imagenet",
        "logit_scale: trained 100, evaluated 1",
        "preprocess: trained standard, evaluated paper",
        "prompts: trained ensemble, evaluated paper",
    ]
    assert train_eval_differences(TRAIN_PROFILES["paper"].to_dict(), evaluated) == []
    assert train_eval_differences(None, evaluated) == []  # a foreign checkpoint: its training is unknown
    # FARE reads no logits: its logit scale and prompts were never used, so they are never flagged
    assert len(train_eval_differences(standard, evaluated, ("logit_scale", "prompts"))) == 2


def test_fp16_verdicts_against_the_fp32_clean_pass_are_counted_not_flagged() -> None:
    """An fp16 attack judges with its own float16 forward (as the official code): where that disagrees with the fp32
    clean pass, its 'robust' verdict is dropped and counted, not reported as a broken attack."""
    from robustbench_zs.attacks.sanity import leaderboard_flags, record_checks

    clean = [True, True, False, False]
    recorded = [True, False, False, False]  # the record's robust mask is always within the clean-correct images
    above = [False, False, True, False]  # the attack's own verdict said robust where the fp32 clean pass did not
    fp16 = record_checks(clean, recorded, above, None, None, label="PGD fp16", precision="fp16")
    assert leaderboard_flags(fp16) == "" and {c["name"]: c["value"] for c in fp16}["fp16_verdict_vs_fp32_clean"] == 1
    fp32 = record_checks(clean, recorded, above, None, None, label="PGD")
    assert "robust>clean" in leaderboard_flags(fp32)
