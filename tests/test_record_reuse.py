"""Names and paths change no number, so they stay out of record keys: a renamed or moved copy of the same weights
reuses its records, a changed byte of the weights does not, and records keyed the old way (with the checkpoint's
folder name) are still found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from robustbench_zs.cli import main
from robustbench_zs.engine import evaluator, runner, variants
from robustbench_zs.methods.interpolation import Interpolation
from robustbench_zs.models import ModelSpec, load_model

TINY_ARGS = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A checkpoint in the official PMG-AFT format holding slightly moved tiny weights."""
    model = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0))
    torch.manual_seed(1)
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.model.visual.state_dict().items()
    }
    path = tmp_path_factory.mktemp("ckpt") / "pmg_aft_official.pth.tar"
    torch.save({"epoch": 9, "vision_encoder_state_dict": state}, path)
    return path


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (out / "records").rglob("*.json")}


def _run(out: Path, *extra: str) -> list[str]:
    args = ["run", "--datasets", "synthetic", "--n", "16", "--attack", "pgd", "--steps", "2"]
    args += ["--out", str(out), "--models-dir", str(out / "no-models"), *TINY_ARGS, *extra]
    assert main(args) == 0
    return args


def test_a_renamed_copy_of_a_checkpoint_reuses_its_records_and_a_changed_one_does_not(tmp_path, official, capsys):
    out = tmp_path / "out"
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={official}")
    first = _records(out)
    assert len(first) == 2 and all(r["model"]["checkpoint_name"] == official.name for r in first.values())
    capsys.readouterr()

    moved = tmp_path / "elsewhere" / "renamed.pth.tar"
    moved.parent.mkdir()
    shutil.copyfile(official, moved)
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={moved}")
    assert "all 2 records exist, skipped" in capsys.readouterr().out
    assert _records(out) == first  # nothing recomputed, nothing rewritten
    # a second dataset under the new name: the leaderboard keeps one row for the one set of weights, complete,
    # labelled with the newest name, instead of two half rows
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={moved}", "--datasets", "synthetic,world-colour")
    board = (out / "leaderboard.md").read_text()
    assert board.count("pmg_aft ·") == 2 and board.count("+renamed.pth.tar") == 2, board  # clean and PGD-2 tables
    assert official.name not in board
    first = _records(out)
    capsys.readouterr()

    changed = tmp_path / "changed.pth.tar"
    state = torch.load(official, weights_only=True)["vision_encoder_state_dict"]
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3
    torch.save({"epoch": 9, "vision_encoder_state_dict": state}, changed)
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={changed}")
    assert "skipped" not in capsys.readouterr().out
    again = _records(out)
    assert len(again) == 6 and len(set(again) - set(first)) == 2
    assert {r["model"]["checkpoint_name"] for r in again.values()} == {official.name, moved.name, changed.name}


def test_a_moved_interpolation_endpoint_reuses_its_records(tmp_path, official, capsys):
    out = tmp_path / "out"
    sweep = ("--methods", "interpolation", "--set", "interpolation.alpha=0.5", "--set")
    _run(out, *sweep, f"interpolation.theta1={official}")
    first = _records(out)
    assert len(first) == 2
    rec = next(iter(first.values()))
    assert rec["model"]["method_config"]["theta1"] == str(official)  # the path is recorded, for the reader
    assert rec["model"]["theta1"].startswith("sha256:")
    capsys.readouterr()
    moved = tmp_path / "moved.pth.tar"
    shutil.copyfile(official, moved)
    _run(out, *sweep, f"interpolation.theta1={moved}")
    assert "all 2 records exist, skipped" in capsys.readouterr().out
    assert _records(out) == first
    # a second dataset with the moved file: one row per table, named with the newest path, not two half rows
    _run(out, *sweep, f"interpolation.theta1={moved}", "--datasets", "synthetic,world-colour")
    board = (out / "leaderboard.md").read_text()
    assert board.count("interpolation(") == 2 and board.count(f"theta1={moved}") == 2, board


def test_records_keyed_with_the_checkpoint_name_are_still_reused(tmp_path, official, capsys, monkeypatch):
    """Records written before names left the key (the key then held ``checkpoint_name``, interpolation's paths, the
    profile's name and the run's attack precision) are found under their old keys: an upgrade recomputes nothing."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # the keys as 0.1.0 computed them until 2026-12-06
        m.setattr(variants, "DISPLAY_ONLY", ())
        m.setattr(runner, "UNKEYED_PROFILE", ())
        m.setattr(Interpolation, "weights_options", ())
        _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={official}")
        _run(out, "--methods", "interpolation", "--set", f"interpolation.theta1={official}")
    old = _records(out)
    assert len(old) == 4
    capsys.readouterr()
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={official}")
    _run(out, "--methods", "interpolation", "--set", f"interpolation.theta1={official}")
    said = capsys.readouterr().out
    assert said.count("all 2 records exist, skipped") == 2, said
    assert _records(out) == old
    # --force recomputes under the new key; the leaderboard keeps the newest record of a cell, so no row doubles
    _run(out, "--methods", "pmg_aft", "--checkpoint", f"pmg_aft={official}", "--force")
    assert len(_records(out)) == 6
    board = (out / "leaderboard.md").read_text()
    assert board.count("pmg_aft ·") == 2, board  # one row in each table: clean and PGD-2


def test_a_clean_record_is_shared_by_runs_of_other_attack_precisions(tmp_path, capsys):
    """The clean pass runs in fp32 whatever the attacks do: a bf16 run (profile ``custom``) reuses the fp32 run's
    clean record and computes only its attacks; the attacks of the two precisions stay apart."""
    out = tmp_path / "out"
    _run(out, "--methods", "clip")
    first = _records(out)
    assert sorted(r["attack"]["name"] for r in first.values()) == ["clean", "pgd"]
    capsys.readouterr()
    _run(out, "--methods", "clip", "--attack-precision", "bf16")
    said = capsys.readouterr().out
    assert "(2 written" not in said and "1 written, 1 already there" in said, said
    both = _records(out)
    assert len(both) == 3 and {n: r for n, r in both.items() if n in first} == first
    assert sorted(r["attack"].get("precision", "-") for r in both.values()) == ["-", "bf16", "fp32"]


def test_a_run_killed_before_the_upgrade_goes_on_from_its_images(tmp_path, official, capsys, monkeypatch):
    """The per-image progress of a run interrupted while records were keyed the old way is picked up under the new
    key: the rerun attacks only the images not yet decided and ends with the records of an uninterrupted run."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    extra = ("--methods", "pmg_aft", "--checkpoint", f"pmg_aft={official}", "--n", "32", "--batch-size", "8")
    real_save = evaluator._State.save

    def save_then_stop(self, spent=None):
        real_save(self, spent)
        if self.path is not None and self.path.name.startswith("pgd-") and self.done.sum() >= 16:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:  # the old keys, and a run stopped halfway through its attack
        m.setattr(variants, "DISPLAY_ONLY", ())
        m.setattr(runner, "UNKEYED_PROFILE", ())
        m.setattr(evaluator._State, "save", save_then_stop)
        args = ["run", "--datasets", "synthetic", "--attack", "pgd", "--steps", "2", *extra]
        assert main([*args, "--out", str(out), "--models-dir", str(out / "none"), *TINY_ARGS]) == 130
    (old_partial,) = (out / "records").rglob("pgd-*.partial.npz")
    opened = []
    real_open = evaluator._State.open.__func__

    def open_(cls, path, indices, slugs):
        st = real_open(cls, path, indices, slugs)
        opened.append((Path(path).name, int(st.done.sum())))
        return st

    monkeypatch.setattr(evaluator._State, "open", classmethod(open_))
    _run(out, *extra)
    pgd = [o for o in opened if o[0].startswith("pgd-")]
    assert len(pgd) == 1 and pgd[0][1] == 16 and pgd[0][0] != old_partial.name, opened  # went on, under the new key
    assert not list((out / "records").rglob("*.partial.npz"))
    _run(fresh, *extra)
    # the clean record finished before the stop and keeps its old key; each record's numbers are the fresh run's
    got = {r["threat_label"]: r["result"] for r in _records(out).values()}
    assert got == {r["threat_label"]: r["result"] for r in _records(fresh).values()} and len(got) == 2


def test_a_moved_backbone_file_is_one_leaderboard_row(tmp_path, capsys):
    """``--pretrained FILE`` is keyed by the file's hash: the same weights from another path reuse their records and
    share their row."""
    first, moved = tmp_path / "a" / "clip.pt", tmp_path / "b" / "clip-copy.pt"
    for p in (first, moved):
        p.parent.mkdir()
    torch.save(load_model(ModelSpec("zsbench-tiny", "random", init_seed=0)).model.state_dict(), first)
    shutil.copyfile(first, moved)
    out = tmp_path / "out"
    args = ["run", "--methods", "clip", "--n", "16", "--attack", "pgd", "--steps", "2", "--device", "cpu"]
    args += ["--arch", "zsbench-tiny", "--no-progress", "--out", str(out)]
    assert main([*args, "--pretrained", str(first), "--datasets", "synthetic"]) == 0
    capsys.readouterr()
    assert main([*args, "--pretrained", str(moved), "--datasets", "synthetic,world-colour"]) == 0
    assert "synthetic: all 2 records exist, skipped" in capsys.readouterr().out
    board = (out / "leaderboard.md").read_text()
    assert board.count("| clip ·") == 2, board  # one row in each of the clean and PGD-2 tables
