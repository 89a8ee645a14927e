"""The procedural world: deterministic scenes and captions, tasks that isolate one axis each, held-out pairs that
pre-training never sees, a tokenizer that covers every word, and a pre-training run that repeats bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.prompts import prompt_set
from robustbench_zs.train.world_pretrain import PretrainConfig, batch, pretrain, save_weights
from robustbench_zs.world import scenes as W
from robustbench_zs.world.tasks import ENSEMBLE_TEMPLATES, PAPER_TEMPLATE, TASKS, TRAIN_COLOURS, generate
from robustbench_zs.world.tokenizer import END, UNKNOWN, VOCAB_SIZE, WorldTokenizer

EVAL_TASKS = [t for t in TASKS if t != "world-train"]


def test_scenes_are_a_function_of_the_seed() -> None:
    a = W.render(W.sample_scenes(np.random.default_rng([3, 1]), 64))
    b = W.render(W.sample_scenes(np.random.default_rng([3, 1]), 64))
    c = W.render(W.sample_scenes(np.random.default_rng([3, 2]), 64))
    assert a.dtype == np.uint8 and a.shape == (64, 3, 32, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_every_object_is_drawn_in_its_colour_and_inside_the_image() -> None:
    rng = np.random.default_rng(0)
    scenes = W.sample_scenes(rng, 400)
    img = W.render(scenes)
    rgb = np.array(list(W.COLOURS.values()))[scenes.colour] + scenes.jitter
    for i in range(len(scenes)):
        hit = (img[i].transpose(1, 2, 0) == np.clip(rgb[i], 0, 255)).all(-1)
        assert hit.sum() >= 12, i  # every scene shows its object(s)
    single = scenes.count == 1
    assert (scenes.position[single] >= 0).all() and (scenes.position[~single] == -1).all()
    assert (scenes.size[~single] == 0).all()  # several objects are always small


def test_pretraining_batches_never_hold_a_held_out_pair() -> None:
    banned = {(list(W.COLOURS).index(c), W.SHAPES.index(s)) for c, s in W.HELD_OUT_PAIRS}
    assert len(W.HELD_OUT_PAIRS) == 16
    assert {c for c, _ in W.HELD_OUT_PAIRS} == set(W.COLOURS) and {s for _, s in W.HELD_OUT_PAIRS} == set(W.SHAPES)
    tok = WorldTokenizer()
    cfg = PretrainConfig(batch_size=512)
    for step in range(4):
        rng = np.random.default_rng([cfg.seed, step])
        scenes, focus = W.sample_pairs(rng, 256)
        assert not {(int(c), int(s)) for c, s in zip(scenes.colour, scenes.shape, strict=True)} & banned
        images, tokens = batch(cfg, step, tok)
        assert images.shape == (512, 3, 32, 32) and tokens.shape == (512, 24)
        assert not (tokens == UNKNOWN).any() and (tokens.argmax(1) == (tokens > 0).sum(1) - 1).all()  # END last


def test_minimal_pairs_differ_on_their_axis_only() -> None:
    scenes, focus = W.sample_pairs(np.random.default_rng(5), 300)
    fields = {"shape": "shape", "colour": "colour", "size": "size", "position": "position", "count": "count",
              "texture": "texture"}  # fmt: skip
    for k in range(300):
        axis = W.AXES[focus[2 * k]]
        a, b = scenes.subset(np.array([2 * k])), scenes.subset(np.array([2 * k + 1]))
        differ = {f for f in fields if getattr(a, f)[0] != getattr(b, f)[0]}
        # a count pair also differs in position (one object has a place, several are scattered)
        assert axis in differ and differ <= {axis, "position" if axis == "count" else axis}, (axis, differ)
    captions = W.captions(scenes, np.random.default_rng(6), focus)
    assert all(captions[2 * k] != captions[2 * k + 1] for k in range(300))


def test_the_tokenizer_covers_every_caption_and_prompt() -> None:
    tok = WorldTokenizer()
    texts = W.captions(W.sample_scenes(np.random.default_rng(1), 2000), np.random.default_rng(2))
    for task in TASKS.values():
        texts += [t.format(c) for c in task.classnames for t in (PAPER_TEMPLATE, *ENSEMBLE_TEMPLATES)]
    ids = tok(texts)
    assert not (ids == UNKNOWN).any() and ids.max() == END == VOCAB_SIZE - 1
    assert int((ids > 0).sum(1).max()) <= tok.context_length
    want = torch.tensor([2, *tok.encode("this is a photo of a"), UNKNOWN, END])  # real prompts still tokenize
    assert torch.equal(tok(["This is a photo of a dolphin."])[0, : len(want)], want)


@pytest.mark.parametrize("task_id", list(TASKS))
def test_each_task_is_balanced_deterministic_and_registered(task_id: str) -> None:
    task, spec = TASKS[task_id], DATASETS.get(task_id)
    images, labels = generate(task, "test")
    assert len(labels) >= 1000 and images.shape[1:] == (3, 32, 32)
    counts = np.bincount(labels, minlength=len(task.classnames))
    assert counts.max() - counts.min() <= 1
    again, _ = generate(task, "test")
    assert np.array_equal(images, again)
    data = spec.loader(None, "test")
    assert len(data) == len(labels) and data.classnames == list(task.classnames)
    names, templates, _ = prompt_set(spec, data, "ensemble")
    assert templates == list(ENSEMBLE_TEMPLATES) and names == list(task.classnames)
    names, templates, _ = prompt_set(spec, data, "paper")
    assert templates == [PAPER_TEMPLATE] and names == list(task.classnames)


def test_each_task_varies_its_own_axis() -> None:
    """The label of a task is the attribute it names: drawing a task's scenes gives exactly that attribute."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 6
    assert np.array_equal(TASKS["world-shape"].draw(rng, y).shape, y)
    y = np.arange(60) % 5
    s = TASKS["world-position"].draw(rng, y)
    assert np.array_equal(s.position, y) and (s.count == 1).all()
    y = np.arange(60) % 3
    s = TASKS["world-count"].draw(rng, y)
    assert np.array_equal(s.count, y + 1) and (s.size == 0).all()
    held = TASKS["world-composition"].draw(rng, np.arange(16))
    assert {(list(W.COLOURS)[c], W.SHAPES[s]) for c, s in zip(held.colour, held.shape, strict=True)} == set(
        W.HELD_OUT_PAIRS
    )


def test_the_training_set_holds_out_values_and_pairs() -> None:
    train = TASKS["world-train"]
    assert dict(train.splits)["train"] >= 10_000 and len(train.classnames) >= 20
    named = " ".join(train.classnames)
    assert not any(c in named for c in W.COLOURS if c not in TRAIN_COLOURS)
    assert not any(f"{c} {s}" in named for c, s in W.HELD_OUT_PAIRS)
    assert DATASETS.get("world-train").loader(None, "train").images.shape[0] == dict(train.splits)["train"]


def test_pretraining_repeats_bit_for_bit(tmp_path) -> None:
    """The same recipe on one thread gives the same file: the shipped weights' promise, on a short schedule."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = PretrainConfig(steps=3, batch_size=16, warmup=1)
        shas = [save_weights(pretrain(cfg, echo=lambda s: None), cfg, tmp_path / f"w{i}.safetensors") for i in range(2)]
        other = PretrainConfig(steps=3, batch_size=16, warmup=1, seed=1)
        shas.append(save_weights(pretrain(other, echo=lambda s: None), other, tmp_path / "w2.safetensors"))
    finally:
        torch.set_num_threads(before)
    assert shas[0] == shas[1] and shas[0] != shas[2]


def test_shipped_weights_are_checked_before_use(tmp_path, monkeypatch, capsys) -> None:
    """A damaged or missing copy of the shipped weights is one line naming the file and how to rebuild it."""
    import dataclasses

    import robustbench_zs.world as world
    from robustbench_zs.cli import main
    from robustbench_zs.errors import ZSBenchError
    from robustbench_zs.models import ModelSpec, load_model, loader

    damaged = tmp_path / "zsbench-world.safetensors"
    damaged.write_bytes(world.WORLD_WEIGHTS.path.read_bytes()[:-8] + b"\0" * 8)
    fake = dataclasses.replace(world.WORLD_WEIGHTS, file=str(damaged))
    monkeypatch.setitem(loader.PACKAGED, ("zsbench-world", "world"), fake)
    with pytest.raises(ZSBenchError, match="damaged.*zsbench world pretrain"):
        load_model(ModelSpec("zsbench-world", "world"))
    gone = dataclasses.replace(fake, file=str(tmp_path / "gone.safetensors"))
    monkeypatch.setitem(loader.PACKAGED, ("zsbench-world", "world"), gone)
    assert main(["run", "--preset", "world", "--out", str(tmp_path / "out"), "--n", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err and "gone.safetensors" in err


def test_world_summary_and_figures_from_records(tmp_path) -> None:
    """The rendering half of ``zsbench reproduce world``, on a fast run of CLIP on every world column."""
    from robustbench_zs.attacks import Threat
    from robustbench_zs.engine.runner import RunConfig, run
    from robustbench_zs.models import ModelSpec
    from robustbench_zs.paper.world import DATASETS as COLUMNS
    from robustbench_zs.paper.world import write_summary
    from robustbench_zs.profiles import get_profile, run_config_fields

    threats = tuple(Threat("pgd", "linf", e / 255, 2, 1 / 255) for e in (1, 4))
    cfg = RunConfig(methods=("clip",), datasets=COLUMNS, model=ModelSpec("zsbench-world", "world"), threats=threats,
                    data_root=tmp_path, out_dir=tmp_path / "out", n=16, cache_dir=tmp_path / "cache", device="cpu",
                    progress=False, **run_config_fields(get_profile("standard")))  # fmt: skip
    run(cfg, echo=lambda s: None)
    out = write_summary(tmp_path / "out", "standard")
    text = out["markdown"].read_text()
    assert "## Averages over the 8 zero-shot tasks" in text and "| clip " in text and "world-composition" in text
    assert out["csv"].is_file()
    for fig in ("fig4", "fig5"):
        assert out[fig]["png"].read_bytes()[:4] == b"\x89PNG" and out[fig]["csv"].is_file()


def test_world_commands_refuse_bad_input(tmp_path, capsys) -> None:
    from robustbench_zs.cli import main

    cases = [
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--batch-size", "7"], "must be even"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--steps", "0"], "--steps 0 must be at least 1"),
        (["world", "pretrain", "--out", str(tmp_path), "--steps", "1"], "is a folder"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--lr", "nan"], "positive finite"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--lr", "inf"], "positive finite"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--lr=-1e-3"], "positive finite"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--warmup", "-5"], "--warmup -5 must be at least 0"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--threads", "0"], "--threads 0 must be at least 1"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--seed", "-1"], "--seed -1 must be at least 0"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--steps", "5", "--check"], "drop --steps"),
        (["world", "pretrain", "--out", str(tmp_path / "w.st"), "--threads", "2", "--check"], "drop --threads"),
        (["reproduce", "world", "--paper-subsample"], "does not apply to the world target"),
        (["reproduce", "world", "--arch", "ViT-B-16"], "always runs the world model"),
        (["reproduce", "world", "--aa-n", "-1"], "--aa-n -1 must be at least 0"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (argv, err)


@pytest.mark.slow
def test_reproduce_world_end_to_end_on_a_short_schedule(tmp_path, one_thread) -> None:
    """``zsbench reproduce world``'s whole plan (every trained row, the interpolation, AutoAttack on the Table 3 rows,
    summary, leaderboard, figures, comparison) on one epoch and a few images per task."""
    from robustbench_zs.paper.world import AA_METHODS, DATASETS, PLAN, reproduce_world
    from robustbench_zs.report.leaderboard import records_frame

    out = reproduce_world(tmp_path / "out", n=8, aa_n=2, epochs=1, cache_dir=tmp_path / "cache", progress=False,
                          echo=lambda s: None)  # fmt: skip
    df = records_frame(tmp_path / "out")
    methods = set(df["method"].str.split("(").str[0])
    assert methods == {r.method for r in PLAN} | {"interpolation"}
    aa = df[df["attack"] == "autoattack"]
    assert set(aa["method"]) == set(AA_METHODS) and set(aa["dataset"]) == set(DATASETS) and set(aa["n"]) == {2}
    text = out["markdown"].read_text()
    assert "| pmg_aft " in text and "interpolation(alpha=0.5" in text
    comparison = out["comparison"].read_text()
    assert "A = pmg_aft" in comparison and "B = tecoa" in comparison and "| acc A %" in comparison
    for fig in ("fig4", "fig5"):
        assert out[fig]["png"].is_file()


def test_check_measures_how_far_pretrained_weights_lie_from_the_shipped_ones(tmp_path, monkeypatch, capsys) -> None:
    """``world pretrain --check`` on a machine whose kernels round otherwise: not bit-equal, so it exits 1 and says
    how far the weights lie (rounding drift stays below a percent; several percent is another recipe)."""
    from safetensors.torch import load_file, save_file

    import robustbench_zs.cli.world as world_cli
    from robustbench_zs.cli import main
    from robustbench_zs.world import WORLD_WEIGHTS

    shipped = load_file(str(WORLD_WEIGHTS.path))

    def drifted(cfg, out):  # what 3,000 steps on another CPU model give: the shipped weights, nudged by 0.5%
        g = torch.Generator().manual_seed(0)
        save_file({k: v + 0.005 * v.abs().mean() * torch.randn(v.shape, generator=g) for k, v in shipped.items()}, out)
        return hashlib.sha256(Path(out).read_bytes()).hexdigest()

    monkeypatch.setattr(world_cli, "pretrain", lambda cfg: None)
    monkeypatch.setattr(world_cli, "save_weights", lambda model, cfg, out: drifted(cfg, out))
    assert main(["world", "pretrain", "--out", str(tmp_path / "w.safetensors"), "--check"]) == 1
    printed = capsys.readouterr().out
    assert "differs from the shipped weights" in printed and "relative L2 distance 0." in printed, printed
    rel, worst = world_cli.weights_distance(tmp_path / "w.safetensors", WORLD_WEIGHTS.path)
    assert 0.001 < rel < 0.02 and worst > 0
    assert world_cli.weights_distance(WORLD_WEIGHTS.path, WORLD_WEIGHTS.path) == (0.0, 0.0)
