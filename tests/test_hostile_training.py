"""Hostile training: kills at every write of a save, resumes of another configuration, damaged resume states, and
numbers that make no sense. Each refusal is one line on stderr, exit code 2, nothing already on disk changed; each
kill leaves a state from which the run ends with the weights of an uninterrupted one, bit for bit.

The cases are listed in docs/bad_inputs.md (section "Training"), which a test here keeps in step with this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from robustbench_zs.cli import main
from robustbench_zs.datasets import synthetic
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import ModelSpec
from robustbench_zs.train import TrainConfig, train
from robustbench_zs.train.state import POINTER, load_state
from robustbench_zs.weights import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)
BASE = ["--train-dataset", "synthetic", "--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu"]
BASE += ["--no-progress", "--batch-size", "32", "--epochs", "2"]


@pytest.fixture(autouse=True)
def small_split(monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "train", 96)  # batch 32: 3 steps per epoch


def _cfg(root: Path, method: str = "ft_standard", **kw) -> TrainConfig:
    recipe = {"batch_size": 32, "epochs": 2, "lr": 1e-2, "warmup_steps": 1, **kw.pop("recipe", {})}
    return TrainConfig(
        method=method,
        model=kw.pop("model", TINY),
        train_dataset="synthetic",
        data_root=root,
        out_dir=root / "models",
        recipe=recipe,
        device="cpu",
        progress=False,
        cache_dir=root / "cache",
        name="run",
        **kw,
    )


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes (links as their target)."""
    out = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors, meta = load_checkpoint(folder)
    assert meta["complete"], meta
    return tensors


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own refusals (which exit) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def _one_line_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert _exit_code(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --- kills at every write of a save --------------------------------------------------------------------------------

#: the calls that write, rename or remove on disk during a training run; a kill lands just before any one of them
WRITES = (
    (os, "fsync"),
    (os, "replace"),
    (os, "rename"),
    (shutil, "rmtree"),
    (safetensors.torch, "save_file"),
)


class _Writes:
    """Counts the write calls (and which save each belongs to); ``kill_at`` ends the process at that call, as a
    SIGKILL would: no exception handler, no atexit, no flush."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at, self.calls = kill_at, []

    def __enter__(self):
        self.saved = [(mod, name, getattr(mod, name)) for mod, name in WRITES]
        for mod, name, real in self.saved:
            setattr(mod, name, self._wrap(name, real))
        return self

    def __exit__(self, *exc) -> None:
        for mod, name, real in self.saved:
            setattr(mod, name, real)

    def _wrap(self, name: str, real):
        def call(*a, **k):
            self.calls.append((name, _saver()))
            if self.kill_at is not None and len(self.calls) == self.kill_at:
                os._exit(137)
            return real(*a, **k)

        return call


def _saver() -> str:
    """Which save a write belongs to: ``save_state@<step>``, ``save_checkpoint`` or ``other``."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_name
        if name == "save_state":
            return f"save_state@{frame.f_locals['step']}"
        if name == "save_checkpoint":
            return name
        frame = frame.f_back
    return "other"


def _killed_at(cfg: TrainConfig, k: int) -> int:
    """Train in a forked child killed at write ``k``; returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            with _Writes(kill_at=k):
                train(cfg, echo=lambda s: None)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_sweep(tmp_path: Path, method: str, pick) -> int:
    """The uninterrupted run counts the writes; then, for each picked write, a run killed there and resumed must end
    with the uninterrupted weights, bit for bit. Returns how many kill points were tried."""
    with _Writes() as seen:
        ref = _weights(train(_cfg(tmp_path / "ref", method, save_every=2), echo=lambda s: None).folder)
    calls = seen.calls
    saves: dict[str, list[int]] = {}  # which save -> its writes (1-based call numbers)
    for i, (_, where) in enumerate(calls, 1):
        if where != "other":
            saves.setdefault(where, []).append(i)
    assert sorted(saves) == ["save_checkpoint", *(f"save_state@{s}" for s in (2, 3, 4, 6))], sorted(saves)
    picked = pick(saves)
    for k in picked:
        root = tmp_path / f"kill{k}"
        assert _killed_at(_cfg(root, method, save_every=2), k) == 137, k
        resume = root / "models" / "run" / "resume"
        if (resume / POINTER).exists():  # what a kill leaves is a complete state, or no pointer at all
            assert load_state(resume)[2]["step"] in (2, 3, 4, 6), k
        res = train(_cfg(root, method, save_every=2), echo=lambda s: None)
        assert _same(_weights(res.folder), ref), (k, calls[k - 1])
        shutil.rmtree(root)
    return len(picked)


def test_a_kill_at_any_write_of_one_save_resumes_to_the_same_weights(tmp_path) -> None:
    """Fast variant: every write of the resume save after step 4 and of the final checkpoint."""

    def pick(saves: dict[str, list[int]]) -> list[int]:
        return saves["save_state@4"] + saves["save_checkpoint"]

    assert _kill_sweep(tmp_path, "ft_standard", pick) >= 15


@pytest.mark.slow
def test_a_kill_at_every_write_of_a_run_resumes_to_the_same_weights(tmp_path) -> None:
    """Every write of every save of a PMG-AFT run (resume states at steps 2, 3, 4, 6 and the checkpoint)."""
    assert _kill_sweep(tmp_path, "pmg_aft", lambda saves: sorted(k for v in saves.values() for k in v)) >= 50


# --- resuming another configuration --------------------------------------------------------------------------------

CHANGES = {
    "learning rate": (["--lr", "0.02"], "recipe.lr"),
    "method": (["--method", "tecoa"], "method"),
    "method option": (["--set", "beta=2"], "config.beta"),
    "seed": (["--seed", "3"], "seed"),
    "epochs": (["--epochs", "3"], "recipe.epochs"),
    "training eps": (["--train-eps", "2"], "recipe.train_eps_255"),
    "normalization": (["--normalization", "imagenet"], "normalization"),
    "model": (["--arch", "zsbench-tiny-rn"], "model"),
    "training set": (["--train-dataset", "world-train"], "train_dataset"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_resume_of_another_configuration_is_refused(tmp_path, capsys, change: str) -> None:
    out = ["--out", str(tmp_path / "m"), "--data-root", str(tmp_path), "--name", "x"]
    assert main(["train", *BASE, *out, "--method", "pmg_aft", "--max-steps", "2"]) == 0
    capsys.readouterr()
    before = _tree(tmp_path / "m")
    extra, field = CHANGES[change]
    argv = ["train", *BASE, *out, "--method", "pmg_aft", *extra]  # a later --method wins
    _one_line_exit_2(argv, capsys, "another configuration", "--fresh", field)
    assert _tree(tmp_path / "m") == before
    if change not in ("model", "training set"):  # (slow to train here; the refusal is what is tested)
        assert main([*argv, "--fresh", "--max-steps", "1"]) == 0
        assert load_state(tmp_path / "m" / "x" / "resume")[2]["step"] == 1


def test_a_finished_checkpoint_of_another_configuration_is_refused_then_replaced_with_fresh(tmp_path, capsys) -> None:
    out = ["--out", str(tmp_path / "m"), "--data-root", str(tmp_path), "--name", "x"]
    assert main(["train", *BASE, *out, "--method", "tecoa", "--epochs", "1"]) == 0
    capsys.readouterr()
    before = _tree(tmp_path / "m")
    _one_line_exit_2(["train", *BASE, *out, "--method", "tecoa", "--epochs", "1", "--lr", "0.5"], capsys, "recipe.lr")
    assert _tree(tmp_path / "m") == before
    assert main(["train", *BASE, *out, "--method", "tecoa", "--epochs", "1", "--lr", "0.5", "--fresh"]) == 0
    assert load_checkpoint(tmp_path / "m" / "x")[1]["recipe"]["lr"] == 0.5
    # the same configuration again: nothing to do, nothing refused
    assert main(["train", *BASE, *out, "--method", "tecoa", "--epochs", "1", "--lr", "0.5"]) == 0
    assert "already trained" in capsys.readouterr().out


# --- damaged resume states -----------------------------------------------------------------------------------------


def _current(resume: Path) -> Path:
    return resume / (resume / POINTER).read_text().strip()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated weights": lambda r: (
        _current(r)
        .joinpath("weights.safetensors")
        .write_bytes(_current(r).joinpath("weights.safetensors").read_bytes()[:100])
    ),
    "flipped byte in the optimizer state": lambda r: _flip_byte(_current(r) / "optimizer.safetensors"),
    "state.json not JSON": lambda r: _current(r).joinpath("state.json").write_text("{not json"),
    "state.json step edited": lambda r: _edit_state(r, step=1),
    "state.json a list": lambda r: _current(r).joinpath("state.json").write_text("[]"),
    "state.json files removed": lambda r: _edit_state(r, files=None),
    "pointer escapes the folder": lambda r: (r / POINTER).write_text("../../../etc\n"),
    "pointer absolute": lambda r: (r / POINTER).write_text("/etc\n"),
    "pointer garbage bytes": lambda r: (r / POINTER).write_bytes(b"\xff\xfe\x00junk"),
    "pointer to a missing state": lambda r: (r / POINTER).write_text("step-00000002-deadbeef\n"),
    "state folder deleted": lambda r: shutil.rmtree(_current(r)),
    "state folder a link elsewhere": lambda r: _relink(r),
    "weights file missing": lambda r: _current(r).joinpath("weights.safetensors").unlink(),
    "older format (separate files)": lambda r: _legacy(r),
    "pointer is a folder": lambda r: _pointer_dir(r),
}


def _edit_state(resume: Path, **fields) -> None:
    path = _current(resume) / "state.json"
    state = json.loads(path.read_text())
    for k, v in fields.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    path.write_text(json.dumps(state))


def _relink(resume: Path) -> None:
    cur = _current(resume)
    elsewhere = resume.parents[2] / "elsewhere"
    shutil.copytree(cur, elsewhere)
    shutil.rmtree(cur)
    cur.symlink_to(elsewhere, target_is_directory=True)


def _legacy(resume: Path) -> None:
    cur = _current(resume)
    for f in cur.iterdir():
        shutil.copy(f, resume / f.name)
    shutil.rmtree(cur)
    (resume / POINTER).unlink()


def _pointer_dir(resume: Path) -> None:
    (resume / POINTER).unlink()
    (resume / POINTER).mkdir()


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_resume_state_is_one_line_and_fresh_starts_over(tmp_path, capsys, damage: str) -> None:
    out = ["--out", str(tmp_path / "m"), "--data-root", str(tmp_path), "--name", "x"]
    argv = ["train", *BASE, *out, "--method", "ft_standard", "--lr", "0.01"]
    assert main([*argv, "--max-steps", "3"]) == 0
    capsys.readouterr()
    DAMAGES[damage](tmp_path / "m" / "x" / "resume")
    before = _tree(tmp_path / "m")
    _one_line_exit_2(argv, capsys, "--fresh")
    assert _tree(tmp_path / "m") == before
    assert main([*argv, "--fresh"]) == 0
    assert load_checkpoint(tmp_path / "m" / "x")[1]["complete"]
    assert not (tmp_path / "m" / "x" / "resume").exists()
    assert (
        tmp_path / "elsewhere"
    ).exists() or damage != "state folder a link elsewhere"  # never followed, never deleted


def test_a_damaged_checkpoint_meta_is_one_line(tmp_path, capsys) -> None:
    out = ["--out", str(tmp_path / "m"), "--data-root", str(tmp_path), "--name", "x"]
    argv = ["train", *BASE, *out, "--method", "ft_standard"]
    assert main([*argv, "--max-steps", "1"]) == 0
    capsys.readouterr()
    meta = tmp_path / "m" / "x" / "meta.json"
    meta.write_text(meta.read_text()[:40])
    before = _tree(tmp_path / "m")
    _one_line_exit_2(argv, capsys, "meta.json")
    assert _tree(tmp_path / "m") == before
    assert main([*argv, "--fresh"]) == 0


# --- numbers -------------------------------------------------------------------------------------------------------

NUMBERS = {
    "lr nan": (["--lr", "nan"], "--lr nan: must be a finite number"),
    "lr inf": (["--lr", "inf"], "--lr inf: must be a finite number"),
    "lr negative": (["--lr", "-0.1"], "--lr -0.1: must be above 0"),
    "lr zero": (["--lr", "0"], "--lr 0.0: must be above 0"),
    "momentum nan": (["--momentum", "nan"], "--momentum nan: must be a finite number"),
    "momentum negative": (["--momentum", "-0.5"], "--momentum -0.5: must be at least 0 and at most 1"),
    "momentum above 1": (["--momentum", "1.5"], "--momentum 1.5: must be at least 0 and at most 1"),
    "weight decay negative": (["--weight-decay", "-1"], "--weight-decay -1.0: must be at least 0"),
    "weight decay inf": (["--weight-decay", "inf"], "--weight-decay inf: must be a finite number"),
    "warm-up negative": (["--warmup-steps", "-5"], "--warmup-steps -5: must be at least 0"),
    "epochs zero": (["--epochs", "0"], "--epochs 0: must be at least 1"),
    "epochs negative": (["--epochs", "-2"], "--epochs -2: must be at least 1"),
    "batch size zero": (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    "batch size negative": (["--batch-size", "-32"], "--batch-size -32: must be at least 1"),
    "batch size huge": (["--batch-size", "100000000000"], "exceeds the 96 training images"),
    "training eps nan": (["--train-eps", "nan"], "--train-eps nan is negative or not finite"),
    "training eps negative": (["--train-eps", "-1"], "--train-eps -1 is negative or not finite"),
    "training eps over 255": (["--train-eps", "300"], "--train-eps 300 is over 255/255"),
    "training eps that reads as a fraction": (["--train-eps", "0.03"], "--train-eps 0.03 is ambiguous"),
    "training step that reads as a fraction": (["--train-step-size", "0.5"], "--train-step-size 0.5/255 if you mean"),
    "training steps negative": (["--train-steps", "-1"], "--train-steps -1: must be at least 0"),
    "training step size inf": (["--train-step-size", "inf"], "--train-step-size inf is negative or not finite"),
    "training step size negative": (["--train-step-size", "-2"], "--train-step-size -2 is negative or not finite"),
    "max steps zero": (["--max-steps", "0"], "--max-steps 0 must be at least 1"),
    "save every negative": (["--save-every", "-1"], "--save-every -1 must be at least 0"),
    "seed negative": (["--seed", "-1"], "--seed -1 must be at least 0"),
    "epochs not a number": (["--epochs", "two"], "--epochs: invalid int value: 'two'"),
}


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_a_number_out_of_range_is_refused_before_anything_is_written(tmp_path, capsys, case: str) -> None:
    extra, needle = NUMBERS[case]
    argv = ["train", *BASE, "--out", str(tmp_path / "m"), "--data-root", str(tmp_path), "--method", "tecoa", *extra]
    _one_line_exit_2(argv, capsys, needle)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "option,needle",
    [
        ("tecoa.lr=nan", "--set tecoa.lr=nan: must be a finite number"),
        ("tecoa.epochs=-1", "--set tecoa.epochs=-1: must be at least 1"),
        ("tecoa.momentum=inf", "--set tecoa.momentum=inf: must be a finite number"),
        ("tecoa.batch_size=1.5", "--set tecoa.batch_size=1.5: must be a whole number"),
        ("tecoa.train_eps_255=ten", "--set tecoa.train_eps_255=ten: is not a number"),
    ],
)
def test_a_recipe_option_of_run_is_checked_like_trains_flag(tmp_path, capsys, option: str, needle: str) -> None:
    argv = ["run", "--preset", "smoke", "--n", "8", "--methods", "tecoa", "--set", option]
    argv += ["--out", str(tmp_path / "r"), "--models-dir", str(tmp_path / "m"), "--data-root", str(tmp_path)]
    _one_line_exit_2(argv, capsys, needle)
    assert not (tmp_path / "m").exists()


def test_weights_that_become_non_finite_stop_training_and_keep_the_last_good_state(tmp_path, monkeypatch) -> None:
    import robustbench_zs.train.engine as engine

    real = engine.apply_update
    calls = {"n": 0}

    def poisoned(scaled, trainable, opt, scaler, env):
        real(scaled, trainable, opt, scaler, env)
        calls["n"] += 1
        if calls["n"] == 4:  # the loss stays finite this step; the weights do not
            with torch.no_grad():
                trainable[0].view(-1)[0] = float("inf")

    monkeypatch.setattr(engine, "apply_update", poisoned)
    with pytest.raises(ZSBenchError) as err:
        train(_cfg(tmp_path, save_every=2), echo=lambda s: None)
    assert "non-finite" in str(err.value) and "\n" not in str(err.value)
    weights, _, state = load_state(tmp_path / "models" / "run" / "resume")
    assert state["step"] == 3 and all(torch.isfinite(t).all() for t in weights.values())


# --- the docs -------------------------------------------------------------------------------------------------------


def test_the_docs_training_section_and_the_cases_match_both_ways() -> None:
    import importlib
    import re

    from test_hostile_files import DAMAGED_META, FLAGS, WEIGHTS

    section = DOC.read_text(encoding="utf-8").split("\n## Training", 1)[1]
    rows = [m.group(1) for m in re.finditer(r"^\| ([^|]+?) \|", section, flags=re.M)]
    rows = [r for r in rows if r not in ("input", "---")]
    # rows tried by one test of their own: the row and the test's name, which must exist
    extras = {
        "kill at any write of a save": "test_hostile_training::test_a_kill_at_any_write_of_one_save_resumes_to_the_same_weights",
        "weights become non-finite": "test_hostile_training::test_weights_that_become_non_finite_stop_training_and_keep_the_last_good_state",
        "--name not a plain folder": "test_hostile_files::test_a_name_that_is_not_a_plain_folder_is_refused",
        "weights file outside its folder": "test_hostile_files::test_a_weights_file_outside_its_folder_is_refused",
        "annotation line leaving the dataset": "test_hostile_files::test_an_annotation_line_that_leaves_the_dataset_is_refused",
        "template with another placeholder": "test_hostile_files::test_a_template_with_another_placeholder_is_one_line",
        "files created with mode 0600": "test_hostile_files::test_what_we_write_follows_the_umask",
        "recipe option of run out of range": "test_hostile_training::test_a_recipe_option_of_run_is_checked_like_trains_flag",
        "image over the decompression-bomb limit": "test_hostile_files::test_a_decompression_bomb_is_refused_before_it_is_decoded",
        "record that is not a regular file": "test_hostile_files::test_a_record_that_is_not_a_regular_file_is_skipped_not_read",
        "closed stdout": "test_hostile_files::test_a_closed_stdout_is_a_quiet_exit",
        "leaderboard on a full disk": "test_hostile_disk::test_the_leaderboard_on_a_real_full_disk_keeps_the_previous_one",
        "leaderboard over a folder": "test_hostile_files::test_the_leaderboard_on_a_full_disk_or_over_a_folder_is_one_line",
        "training on a full disk": "test_hostile_disk::test_a_training_on_a_disk_that_fills_at_every_write_resumes_to_the_same_weights",
        "run that trains on a full disk": "test_hostile_disk::test_a_run_that_trains_on_a_full_disk_names_models_dir",
        "figure on a full disk": "test_hostile_disk::test_a_figure_that_cannot_be_written_is_one_line_and_keeps_the_previous_one",
        "figure over a folder": "test_hostile_disk::test_a_figure_that_cannot_be_written_is_one_line_and_keeps_the_previous_one",
        "record over a folder": "test_hostile_disk::test_a_folder_in_place_of_a_record_is_one_line",
        "checkpoint weights over a folder": "test_hostile_disk::test_a_folder_in_place_of_a_checkpoint_file_is_one_line",
        "checkpoint meta.json over a folder": "test_hostile_disk::test_a_folder_in_place_of_a_checkpoint_file_is_one_line",
        "results folder is a file": "test_hostile_disk::test_a_file_in_place_of_the_results_folder_is_one_line",
        "flag not UTF-8": "test_hostile_disk::test_a_flag_that_is_not_utf8_is_refused_before_anything_runs",
        "path variable not UTF-8": "test_hostile_disk::test_a_path_variable_that_is_not_utf8_is_refused",
        "checkpoint folder name not UTF-8": "test_hostile_disk::test_a_checkpoint_folder_whose_name_is_not_utf8_is_skipped_with_a_warning",
        "image names not UTF-8": "test_hostile_disk::test_images_whose_names_are_not_utf8_are_trained_on",
        "dataset text file not UTF-8": "test_hostile_disk::test_a_dataset_text_file_that_is_not_utf8_is_one_line",
    }
    for row, where in extras.items():
        module, name = where.split("::")
        assert callable(getattr(importlib.import_module(module), name, None)), f"{row}: no test {where}"
    tested = [*CHANGES, *DAMAGES, *NUMBERS, *WEIGHTS, *DAMAGED_META, *FLAGS, *extras]
    assert len(tested) == len(set(tested)) and len(rows) == len(set(rows))
    assert sorted(set(tested) - set(rows)) == [], "cases without a row in docs/bad_inputs.md"
    assert sorted(set(rows) - set(tested)) == [], "rows that no test tries"
