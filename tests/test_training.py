"""The training engine on the tiny model and synthetic data: every method learns, resume is exact, runs are
evaluated through ``zsbench run``, and adversarial training buys robustness that standard fine-tuning does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS, synthetic
from robustbench_zs.engine.evaluator import evaluate
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import METHODS
from robustbench_zs.models import ModelSpec
from robustbench_zs.profiles import TRAIN_PROFILES
from robustbench_zs.report.leaderboard import build_tables, records_frame
from robustbench_zs.train import TrainConfig, train
from robustbench_zs.train.engine import lr_at
from robustbench_zs.train.state import load_state
from robustbench_zs.weights import load_checkpoint

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)
TINY_RN = ModelSpec("zsbench-tiny-rn", "random", init_seed=0)

#: per method: backbone, recipe and options at which a few steps on one batch visibly lower the loss (kept small:
#: FARE's 10-step attack cut to 2, 4 prompt tokens instead of 100)
SETTINGS = {
    "ft_standard": (TINY, {"lr": 1e-2}, {}),
    "tecoa": (TINY, {"lr": 1e-2}, {}),
    "pmg_aft": (TINY, {"lr": 1e-2}, {}),
    "fare": (TINY, {"lr": 1e-4, "train_steps": 2}, {}),
    "vp_tecoa": (TINY, {"lr": 1.0}, {"n_tokens": "4"}),
    "vp_pmg_aft": (TINY, {"lr": 1.0}, {"n_tokens": "4"}),
    "twins": (TINY_RN, {"lr": 1e-2}, {}),
}
#: every trainable method the registry knows, a plugin's included: the loss test below runs each; a method without
#: an entry in SETTINGS runs at DEFAULT (the tiny ViT, SGD at lr 1e-2, its own options)
TRAINABLE = [k for k, cls in METHODS.items() if cls.trains != "nothing"]
DEFAULT = (TINY, {"lr": 1e-2}, {})


@pytest.fixture
def small_train(monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "train", 64)


def _cfg(tmp_path: Path, method: str, model: ModelSpec = TINY, **kw) -> TrainConfig:
    recipe = {"batch_size": 64, "epochs": 6, "warmup_steps": 1, **kw.pop("recipe", {})}
    return TrainConfig(
        method=method,
        model=model,
        train_dataset="synthetic",
        data_root=tmp_path,
        out_dir=tmp_path / "models",
        recipe=recipe,
        device="cpu",
        progress=False,
        cache_dir=tmp_path / "cache",
        **kw,
    )


def test_the_test_settings_name_registered_trainable_methods() -> None:
    assert set(SETTINGS) <= set(TRAINABLE)


@pytest.mark.parametrize("method", TRAINABLE)
def test_a_few_steps_lower_the_loss(tmp_path, small_train, method: str) -> None:
    model, recipe, options = SETTINGS.get(method, DEFAULT)
    # one batch = the whole (64-image) split, so every step sees the same images
    res = train(_cfg(tmp_path, method, model, recipe={**recipe, "epochs": 8}, options=options), echo=lambda s: None)
    assert res.steps == 8 and len(res.losses) == 8 and all(np.isfinite(res.losses))
    assert np.mean(res.losses[-2:]) < np.mean(res.losses[:2]), res.losses
    tensors, meta = load_checkpoint(res.folder)
    assert meta["method"] == method and meta["complete"] and meta["steps"] == 8
    assert meta["recipe"]["lr"] == recipe["lr"] and meta["seed"] == 0 and "software" in meta
    assert not (res.folder / "resume").exists()
    if METHODS.get(method).trains == "prompts":
        assert all("prompt" in k for k in tensors), list(tensors)[:5]


def test_schedule_is_warmup_then_cosine() -> None:
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0)


def test_resume_ends_with_the_same_weights(tmp_path, small_train, monkeypatch) -> None:
    monkeypatch.setitem(synthetic.SIZES, "train", 96)
    recipe = {"batch_size": 32, "epochs": 2, "lr": 1e-2}  # 3 steps per epoch, 6 in all
    full = train(_cfg(tmp_path / "a", "pmg_aft", recipe=recipe), echo=lambda s: None)
    part = train(_cfg(tmp_path / "b", "pmg_aft", recipe=recipe, max_steps=4), echo=lambda s: None)
    assert part.steps == 4 and load_state(part.folder / "resume")[2]["step"] == 4
    _, meta = load_checkpoint(part.folder)
    assert not meta["complete"]
    rest = train(_cfg(tmp_path / "b", "pmg_aft", recipe=recipe), echo=lambda s: None)
    assert rest.resumed_from == 4 and rest.steps == 6
    a, _ = load_checkpoint(full.folder)
    b, meta = load_checkpoint(rest.folder)
    assert meta["complete"] and sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.losses[4:] == pytest.approx(rest.losses, rel=0, abs=0)


def test_an_interrupted_run_keeps_its_progress(tmp_path, small_train, monkeypatch) -> None:
    import robustbench_zs.methods.tecoa as tecoa_mod

    calls = {"n": 0}
    real = tecoa_mod.TeCoA.loss

    def flaky(self, step):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(tecoa_mod.TeCoA, "loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "tecoa", recipe={"batch_size": 16}), echo=lambda s: None)
    (folder,) = (tmp_path / "models").iterdir()
    assert load_state(folder / "resume")[2]["step"] == 2


def test_tecoa_is_more_robust_than_ft_standard(tmp_path, monkeypatch) -> None:
    """Adversarial fine-tuning buys robustness that clean fine-tuning does not (a test that can fail)."""
    monkeypatch.setitem(synthetic.SIZES, "train", 256)
    recipe = {"batch_size": 64, "epochs": 4, "lr": 1e-3, "optimizer": "adamw", "train_eps_255": 8.0}
    recipe |= {"train_steps": 2, "train_step_size_255": 5.0}
    test = DATASETS.get("synthetic").loader(None, "test")
    from robustbench_zs.attacks import Threat
    from robustbench_zs.engine.variants import resolve_variants
    from robustbench_zs.models import HeadKnobs, ZeroShotClassifier, build_text_head

    robust = {}
    # trained with the head it is evaluated with below: the paper's single prompt, CLIP normalization, tau 100
    profile = TRAIN_PROFILES["standard"].with_overrides(prompts="paper")
    for method in ("ft_standard", "tecoa"):
        res = train(_cfg(tmp_path, method, recipe=recipe, profile=profile), echo=lambda s: None)
        (variant,) = resolve_variants((method,), TINY, {}, {method: res.folder}, tmp_path, None)
        loaded, encoder = variant.load(torch.device("cpu"))
        head, _ = build_text_head(
            loaded.model, loaded.tokenizer, list(synthetic.CLASSNAMES), ["This is a photo of a {}"], None
        )
        clf = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, HeadKnobs(), encoder)
        threat = Threat("pgd", "linf", 2 / 255, steps=5, step_size=0.5 / 255)
        out = evaluate(clf, test, [threat], progress=False)
        robust[method] = out.accuracy(threat)
    # measured: ft_standard 10% (chance), tecoa 20% of 512 test images; the Wilson intervals are about +-3.5 points
    assert robust["tecoa"] > robust["ft_standard"] + 0.05, robust


# ----------------------------------------------------------------------------------------------- CLI and run


TINY_ARGS = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


def test_run_trains_what_is_missing_then_reuses_it(tmp_path, small_train, capsys) -> None:
    args = ["run", "--methods", "clip,tecoa", "--datasets", "synthetic", "--train-dataset", "synthetic", "--n", "32"]
    args += ["--attack", "pgd", "--steps", "2", "--set", "tecoa.epochs=1", "--set", "tecoa.batch_size=32"]
    args += ["--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "out"), *TINY_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tecoa: no checkpoint" in out and "tecoa / synthetic (n=32)" in out
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records" / "tecoa").rglob("*.json")]
    assert len(recs) == 2 and all(r["model"]["checkpoint"].startswith("sha256:") for r in recs)
    assert recs[0]["model"]["method_config"] == {}
    assert main([*args, "--force"]) == 0
    assert "no checkpoint" not in capsys.readouterr().out  # found under --models-dir, not retrained


def test_train_cli_and_bad_input(tmp_path, small_train, capsys) -> None:
    base = ["train", "--train-dataset", "synthetic", "--data-root", str(tmp_path), "--out", str(tmp_path / "m")]
    base += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    assert main([*base, "--method", "tecoa", "--epochs", "1", "--batch-size", "32"]) == 0
    assert "images/s" in capsys.readouterr().out
    base += ["--batch-size", "32"]
    cases = {
        ("--method", "twins"): "BatchNorm",
        ("--method", "clip"): "does not train",
        ("--method", "tecoa", "--set", "nope=1"): "no option 'nope'",
        ("--method", "pmg_aft", "--set", "kl_direction=sideways"): "kl_direction",
        ("--method", "tecoa", "--train-dataset", "pcam"): "",
        ("--method", "tecoa", "--batch-size", "5000"): "exceeds",
        ("--method", "tecoa", "--optimizer", "adam"): "unknown optimizer",
    }
    for extra, needle in cases.items():
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (extra, err)


def test_run_with_foreign_or_broken_checkpoints(tmp_path, capsys) -> None:
    from robustbench_zs.models import load_model

    model = load_model(TINY)
    official = tmp_path / "pmg_aft_official.pth.tar"
    torch.save({"epoch": 9, "vision_encoder_state_dict": model.model.visual.state_dict()}, official)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(official.read_bytes()[:1000])
    base = ["run", "--methods", "pmg_aft", "--datasets", "synthetic", "--n", "16", "--attack", "none"]
    base += ["--out", str(tmp_path / "out"), "--models-dir", str(tmp_path / "none"), *TINY_ARGS]
    assert main([*base, "--checkpoint", f"pmg_aft={official}"]) == 0
    rec = json.loads(next((tmp_path / "out" / "records").rglob("*.json")).read_text())
    assert rec["model"]["checkpoint"].startswith("sha256:") and rec["model"]["checkpoint_name"] == official.name
    capsys.readouterr()
    assert main([*base, "--checkpoint", f"pmg_aft={truncated}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated.pth.tar" in err
    wide = tmp_path / "other_arch.pth.tar"
    state = dict(model.model.visual.state_dict())
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save({"vision_encoder_state_dict": state}, wide)
    assert main([*base, "--checkpoint", f"pmg_aft={wide}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conv1.weight" in err
    assert main([*base, "--no-train-missing"]) == 2
    assert "pass --checkpoint pmg_aft=PATH" in capsys.readouterr().err


def test_interpolation_sweep_rows(tmp_path, small_train, capsys) -> None:
    res = train(_cfg(tmp_path, "tecoa", recipe={"batch_size": 32, "epochs": 1, "lr": 1e-2}), echo=lambda s: None)
    args = ["run", "--methods", "clip,interpolation", "--datasets", "synthetic", "--n", "64", "--attack", "none"]
    args += ["--set", f"interpolation.theta1={res.folder}", "--set", "interpolation.alpha=0,0.5,1"]
    args += ["--out", str(tmp_path / "out"), *TINY_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "interpolation(alpha=0.5" in out
    recs = {}
    for p in (tmp_path / "out" / "records").rglob("*.json"):
        r = json.loads(p.read_text())
        recs[r.get("method_label", r["method"])] = r["result"]["per_example"]
    a0 = next(v for k, v in recs.items() if "alpha=0," in k or k.endswith("alpha=0)"))
    assert a0 == recs["clip"]  # alpha = 0 is the pre-trained model, example for example
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert board.count("interpolation(") >= 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "profile",
    [
        ["--batch-size", "64", "--max-steps", "4"],
        # the paper profile (fp32 here): a mean attack loss, train mode, summed KL, and the last partial batch of
        # 2048 % 300 = 248 images shared as 124 + 124
        ["--profile", "paper", "--precision", "fp32", "--batch-size", "300"],
    ],
    ids=["standard", "paper-partial-batch"],
)
def test_two_process_torchrun_matches_one_process(tmp_path, profile) -> None:
    """torchrun --nproc_per_node 2 (gloo, CPU) ends with the weights of one process on the same global batch."""
    common = ["train", "--method", "pmg_aft", "--train-dataset", "synthetic", "--data-root", str(tmp_path)]
    common += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    common += ["--epochs", "1", "--lr", "1e-2", "--name", "run", *profile]
    env = {**os.environ, "ZSBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "robustbench_zs", *common, "--out", str(tmp_path / "one")], env=env)
    assert one.returncode == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run([*torchrun, "-m", "robustbench_zs", *common, "--out", str(tmp_path / "two")], env=env)
    assert two.returncode == 0
    a, _ = load_checkpoint(tmp_path / "one" / "run")
    b, meta = load_checkpoint(tmp_path / "two" / "run")
    assert meta["world_size"] == 2
    if "paper" in profile:
        assert meta["steps"] == 7 and meta["last_batch_size"] == 248
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_unknown_method_and_trainless_errors() -> None:
    with pytest.raises(ZSBenchError, match="known methods"):
        train(TrainConfig("nope", TINY, "synthetic", Path("."), Path(".")))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, small_train, precision: str) -> None:
    """bf16 autocast, and fp16 with a gradient scaler, run and keep the loss finite (CPU autocast here)."""
    profile = TRAIN_PROFILES["standard"].with_overrides(precision=precision)
    res = train(_cfg(tmp_path, "pmg_aft", recipe={"epochs": 3, "lr": 1e-2}, profile=profile), echo=lambda s: None)
    assert res.steps == 3 and all(np.isfinite(res.losses))
    _, meta = load_checkpoint(res.folder)
    assert meta["precision"] == precision


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_state(
    tmp_path, small_train, monkeypatch, bad: str
) -> None:
    monkeypatch.setitem(synthetic.SIZES, "train", 96)
    recipe = {"batch_size": 32, "epochs": 2, "lr": 1e-2}  # 6 steps
    good = train(_cfg(tmp_path / "a", "ft_standard", recipe=recipe, max_steps=2), echo=lambda s: None)
    cls = METHODS.get("ft_standard")
    real_loss = cls.loss

    def poisoned(self, st):
        loss, terms = real_loss(self, st)
        return (loss + float(bad), terms) if st.extras["step"] == 2 else (loss, terms)

    monkeypatch.setattr(cls, "loss", poisoned)
    with pytest.raises(ZSBenchError) as err:
        train(_cfg(tmp_path / "b", "ft_standard", recipe=recipe), echo=lambda s: None)
    message = str(err.value)
    assert f"the loss is {bad} at step 3 of 6" in message and "state after step 2" in message and "\n" not in message
    (folder,) = (tmp_path / "b" / "models").iterdir()
    kept, _, state = load_state(folder / "resume")
    assert state["step"] == 2
    # the kept state is the weights after two good steps, untouched by the non-finite one
    before, _ = load_checkpoint(good.folder)
    for k in before:
        assert torch.equal(kept[k], before[k]), k


@pytest.mark.slow  # about a minute: torch.compile traces the towers in train and eval mode, forward and backward
def test_compiled_training_gives_the_same_weights(tmp_path, small_train, monkeypatch) -> None:
    """``--compile`` goes through torch.compile's tracing (the ``eager`` backend here, to keep the test short; the
    default ``inductor`` generates code) and ends with the weights of the uncompiled run under the same names."""
    from robustbench_zs.train import engine

    monkeypatch.setattr(engine, "COMPILE_BACKEND", "eager")
    recipe = {"epochs": 2, "lr": 1e-2}
    plain = train(_cfg(tmp_path / "a", "pmg_aft", recipe=recipe), echo=lambda s: None)
    compiled = train(_cfg(tmp_path / "b", "pmg_aft", recipe=recipe, compile=True), echo=lambda s: None)
    (a, meta_a), (b, meta_b) = load_checkpoint(plain.folder), load_checkpoint(compiled.folder)
    assert meta_b["compiled"] is True and meta_a["compiled"] is False
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    np.testing.assert_allclose(compiled.losses, plain.losses, rtol=1e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_prefetched_batches_are_the_same_batches(tmp_path, small_train, monkeypatch) -> None:
    """Reading each batch one step ahead on a thread (the GPU default) trains on exactly the same images."""
    monkeypatch.setitem(synthetic.SIZES, "train", 96)
    recipe = {"batch_size": 32, "epochs": 2, "lr": 1e-2}  # 6 steps over two epochs
    a = train(_cfg(tmp_path / "a", "tecoa", recipe=recipe, prefetch=False), echo=lambda s: None)
    b = train(_cfg(tmp_path / "b", "tecoa", recipe=recipe, prefetch=True), echo=lambda s: None)
    assert a.losses == b.losses and len(a.losses) == 6


def test_batch_loader_gathers_and_prefetches_the_same_images() -> None:
    from robustbench_zs.train.engine import BatchLoader

    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = np.arange(10) % 3

    class Items:  # a dataset read image by image
        def __getitem__(self, i):
            return rows[i], int(labels[i])

    class Gather(Items):  # the tensor cache's one-gather read
        def take(self, idx):
            return rows[torch.as_tensor(idx)], labels[idx]

    idx = np.array([7, 2, 2, 9])
    cpu = torch.device("cpu")
    want = (rows[idx].float() / 255, torch.as_tensor(labels[idx]))
    for images in (Items(), Gather()):
        for prefetch in (False, True):
            loader = BatchLoader(images, cpu, prefetch=prefetch)
            loader.request(idx)
            got = loader.get(idx)
            other = loader.get(np.array([0, 1]))  # nothing requested: read on the spot
            loader.close()
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            assert torch.equal(other[0], rows[:2].float() / 255)


def test_run_refuses_an_incomplete_checkpoint_and_says_how_to_finish_it(tmp_path, small_train, capsys) -> None:
    """Train and run share --models-dir; a training stopped by --max-steps is refused by run in one line."""
    from robustbench_zs.cli import main

    models = tmp_path / "models"
    argv = ["train", "--method", "ft_standard", "--arch", "zsbench-tiny", "--pretrained", "random"]
    argv += ["--train-dataset", "synthetic", "--models-dir", str(models), "--data-root", str(tmp_path)]
    argv += ["--batch-size", "32", "--epochs", "2", "--max-steps", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    (folder,) = [p for p in models.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["complete"] is False and meta["steps"] == 1 and meta["total_steps"] == 4
    capsys.readouterr()
    run = ["run", "--preset", "smoke", "--methods", "ft_standard", "--n", "8", "--attack", "none"]
    run += ["--out", str(tmp_path / "r"), "--models-dir", str(models), "--data-root", str(tmp_path)]
    assert main([*run, "--no-train-missing"]) == 2  # never picked up by itself
    assert "no ft_standard checkpoint" in capsys.readouterr().err
    assert main([*run, "--checkpoint", f"ft_standard={folder}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "stopped at step 1 of 4" in line and f"--models-dir {models} --name {folder.name}" in line
    assert "zsbench train --method ft_standard" in line


def test_two_checkpoints_of_one_method_are_two_leaderboard_rows(tmp_path, small_train, capsys) -> None:
    """Two trainings of one method (two weight versions) evaluated into one results folder stay two rows, told
    apart by checkpoint name; the same name holding other weights is told apart by the checkpoint's short hash."""
    row = "ft_standard · zsbench-tiny/random(seed=0)"  # method · model, then the checkpoint's name
    models, out = tmp_path / "models", tmp_path / "results"
    argv = ["train", "--method", "ft_standard", "--arch", "zsbench-tiny", "--pretrained", "random"]
    argv += ["--train-dataset", "synthetic", "--models-dir", str(models), "--data-root", str(tmp_path)]
    argv += ["--batch-size", "32", "--epochs", "1", "--device", "cpu", "--no-progress"]
    run = ["run", "--preset", "smoke", "--methods", "ft_standard", "--n", "8", "--attack", "none"]
    run += ["--out", str(tmp_path / "results"), "--models-dir", str(models), "--data-root", str(tmp_path)]
    for name, lr in (("first", "1e-3"), ("second", "1e-2")):
        assert main([*argv, "--name", name, "--lr", lr]) == 0
        assert main([*run, "--checkpoint", f"ft_standard={models / name}"]) == 0
    df = records_frame(out)
    rows = build_tables(df)[0]["accuracy"].index
    assert sorted(rows) == [f"{row}+first", f"{row}+second"]
    assert df["weights"].nunique() == 2

    # the folder "first" trained again with another lr and evaluated into the same results folder, beside its old
    # records: one name, two weight versions, so each of the two rows carries its checkpoint's short hash
    old = json.loads((models / "first" / "meta.json").read_text())["weights_sha256"]
    assert main([*argv, "--name", "first", "--lr", "5e-3", "--fresh"]) == 0
    new = json.loads((models / "first" / "meta.json").read_text())["weights_sha256"]
    assert new != old
    assert main([*run, "--checkpoint", f"ft_standard={models / 'first'}"]) == 0
    rows = build_tables(records_frame(out))[0]["accuracy"].index
    assert f"{row}+first @{old[:8]}" in rows
    assert f"{row}+first @{new[:8]}" in rows
    assert f"{row}+second" in rows
