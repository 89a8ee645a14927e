"""Scientific regression tests on the shipped world model: claims about attacks and defenses, each with a margin
measured from real runs (seeds fixed, so every number here is what these exact runs give; the margins leave room for
float differences between machines, not for a broken attack or training loop).

Fast variants run by default (a few hundred images, short schedules); the full ones are marked ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_zs.attacks import Threat
from robustbench_zs.datasets import DATASETS, select_subset
from robustbench_zs.datasets.prompts import prompt_set
from robustbench_zs.engine.evaluator import evaluate
from robustbench_zs.models import HeadKnobs, ModelSpec, ZeroShotClassifier, build_text_head, load_model
from robustbench_zs.world.tasks import TASKS

# torch's own thread count (one per core), not the one_thread fixture of the tiny-model modules: the world model at
# batch 256 uses both cores (the fine-tuning test: 62.6 s in one thread, 34.0 s in two), and every number measured
# below is the same in one thread and in two (checked on 2026-12-06)
WORLD = ModelSpec("zsbench-world", "world")
ZERO_SHOT = [t for t in TASKS if t != "world-train"]


@pytest.fixture(scope="module")
def world():
    return load_model(WORLD, "cpu")


STANDARD = HeadKnobs()  # CLIP normalization, logit scale 100: the standard profile's


def classifier(loaded, task: str, knobs: HeadKnobs = STANDARD, encoder=None) -> ZeroShotClassifier:
    spec = DATASETS.get(task)
    data = spec.loader(None, "test")
    names, templates, _ = prompt_set(spec, data, "ensemble")
    head, _ = build_text_head(loaded.model, loaded.tokenizer, names, templates, None)
    return ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, knobs, encoder)


def accuracy(clf, task: str, threats=(), n: int = 256, batch_size: int = 256) -> dict:
    data = DATASETS.get(task).loader(None, "test")
    res = evaluate(clf, data, list(threats), subset=select_subset(len(data), n, 0), batch_size=batch_size,
                   progress=False)  # fmt: skip
    return {"clean": float(res.clean.mean()), **{t: float(res.robust[t].mean()) for t in threats}}


def pgd(eps_255: float, steps: int = 10, precision: str = "fp32") -> Threat:
    return Threat("pgd", "linf", eps_255 / 255, steps, 1 / 255, precision=precision)


# --- the shipped model knows its world --------------------------------------------------------------------------

#: Clean zero-shot accuracy (%) measured on these 256 images per task (seed 0), and the floor each test asserts: the
#: measured value less 8 points (about two Wilson half-widths at n = 256), never below twice chance.
MEASURED_CLEAN = {
    "world-colour": 100.0,
    "world-shape": 81.6,
    "world-size": 100.0,
    "world-count": 98.0,
    "world-position": 100.0,
    "world-texture": 100.0,
    "world-composition": 89.1,
    "world-objects": 100.0,
}


@pytest.mark.parametrize("task", ZERO_SHOT)
def test_zero_shot_accuracy_is_far_above_chance(world, task: str) -> None:
    acc = 100 * accuracy(classifier(world, task), task)["clean"]
    chance = 100 / DATASETS.get(task).num_classes
    assert acc >= max(MEASURED_CLEAN[task] - 8, 2 * chance), (task, acc)


def test_world_model_averages_the_issue_targets(world) -> None:
    """The shipped model's targets: every task at least twice chance, shape and position at least 70%, the average
    over tasks at least 75% (measured on the whole test splits in the README: 96.1%)."""
    accs = {t: 100 * accuracy(classifier(world, t), t, n=1024)["clean"] for t in ("world-shape", "world-position")}
    assert min(accs.values()) >= 70, accs
    assert np.mean([MEASURED_CLEAN[t] for t in ZERO_SHOT]) >= 75


# --- attacks: stronger with eps and with steps; the paper profile's fp16 moves with the batch --------------------


@pytest.mark.parametrize("task", ["world-shape", "world-count"])
def test_robust_accuracy_falls_with_eps_and_with_steps(world, task: str) -> None:
    """Measured (256 images): shape 81.6 clean, PGD-10 70.7 / 44.1 / 5.5 at 1, 2, 4/255; at 2/255 PGD-1 73.0, PGD-2
    62.1, PGD-5 45.3, PGD-10 44.1. Count: 98.0 clean, 88.7 / 47.7 / 2.0; at 2/255 91.4, 74.2, 49.2, 47.7."""
    threats = [pgd(1), pgd(2), pgd(4), pgd(2, 1), pgd(2, 2), pgd(2, 5)]
    acc = accuracy(classifier(world, task), task, threats)
    by_eps = [acc["clean"], acc[pgd(1)], acc[pgd(2)], acc[pgd(4)]]
    assert all(a - b >= 0.05 for a, b in zip(by_eps, by_eps[1:], strict=False)), by_eps
    assert by_eps[-1] <= 0.15  # 4/255 breaks almost everything
    by_steps = [acc[pgd(2, 1)], acc[pgd(2, 2)], acc[pgd(2, 5)], acc[pgd(2)]]
    assert all(a >= b for a, b in zip(by_steps, by_steps[1:], strict=False)), by_steps
    assert by_steps[0] - by_steps[-1] >= 0.2, by_steps


@pytest.mark.slow  # 72 s on 2 cores; its fast variant on the tiny model stays in the default run:
# test_paper_profile.py::test_mean_attack_loss_underflows_in_fp16_as_the_official_attack
def test_fp16_attack_at_logit_scale_100_underflows_more_with_the_batch(world) -> None:
    """protocol.md section 4: fp16 autocast and a batch-mean loss (the paper profile's attack) at logit scale 100 lose
    the gradients of confidently classified images, more so in larger batches. Measured on world-count at 4/255 (256
    images): fp32 2.0% robust at batch 8 and at batch 256 alike; fp16 69.9% at batch 8, 79.7% at 64, 84.8% at 256."""
    clf = classifier(world, "world-count")
    fp16 = pgd(4, 10, "fp16")
    small = accuracy(clf, "world-count", [pgd(4), fp16], batch_size=8)
    large = accuracy(clf, "world-count", [pgd(4), fp16], batch_size=256)
    assert small[pgd(4)] == large[pgd(4)] <= 0.1  # fp32: the batch changes nothing
    assert small[fp16] >= small[pgd(4)] + 0.4 and large[fp16] >= small[fp16] + 0.08, (small, large)


def test_autoattack_is_at_or_below_pgd(world) -> None:
    """Standard AutoAttack (every component at its standard settings) leaves no more points robust than PGD-10 at the
    same eps, on the same images. Measured on 32 images of world-count at 2/255 (clean 100%): PGD-10 43.8%
    (14 of 32) and AutoAttack 43.8% (14 of 32)."""
    aa = Threat("autoattack", "linf", 2 / 255, 0, 0.0)
    acc = accuracy(classifier(world, "world-count"), "world-count", [pgd(2), aa], n=32)
    assert acc[aa] <= acc[pgd(2)], acc
    assert acc[pgd(2)] - acc[aa] <= 0.25, acc  # both are strong attacks: not far apart either


# --- defenses: adversarial fine-tuning buys robustness that standard fine-tuning does not ----------------------------


def _fine_tune(tmp_path, method: str, epochs: int):
    from robustbench_zs.engine.variants import resolve_variants
    from robustbench_zs.train import TrainConfig, train

    recipe = {"epochs": epochs, "lr": 0.01, "warmup_steps": 10, "batch_size": 256}
    if method != "ft_standard":
        recipe |= {"train_eps_255": 4.0, "train_steps": 2, "train_step_size_255": 2.0}
    cfg = TrainConfig(method, WORLD, "world-train", tmp_path, tmp_path / "models", recipe=recipe, device="cpu",
                      progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    folder = train(cfg, echo=lambda s: None).folder
    (variant,) = resolve_variants((method,), WORLD, {}, {method: folder}, tmp_path, None)
    return variant.load(torch.device("cpu"))


def test_adversarial_fine_tuning_buys_robustness_standard_fine_tuning_does_not(world, tmp_path) -> None:
    """One epoch on world-train (48 steps of 256 images, the world recipe of ``zsbench reproduce world``), then
    PGD-10 at the training eps, 4/255, on 256 images of world-train's test split. Measured: CLIP 24.2% robust
    (100% clean), FT-Standard 20.3% (100% clean), TeCoA 43.4% (78.5% clean). The full six-epoch runs are in
    ``zsbench reproduce world`` (TeCoA 72.7% there)."""
    task = "world-train"
    base = accuracy(classifier(world, task), task, [pgd(4)])[pgd(4)]
    robust = {}
    for method in ("ft_standard", "tecoa"):
        loaded, encoder = _fine_tune(tmp_path / method, method, epochs=1)
        robust[method] = accuracy(classifier(loaded, task, encoder=encoder), task, [pgd(4)])
    assert robust["tecoa"][pgd(4)] >= base + 0.12, (base, robust)
    assert robust["tecoa"][pgd(4)] >= robust["ft_standard"][pgd(4)] + 0.15, (base, robust)
    assert robust["ft_standard"][pgd(4)] <= base + 0.05, (base, robust)
