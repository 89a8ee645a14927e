"""Hostile files and flags: paths that try to leave their root, damaged or foreign checkpoint folders, weights of the
wrong kind, flags that would be ignored, and the permissions of what we write. Each refusal is one line on stderr and
exit code 2 (a damaged folder that the run does not need: one warning line, exit 0), and nothing on disk changes.

The cases are listed in docs/bad_inputs.md (section "Training"), which test_hostile_training.py keeps in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from dataset_fixtures import write_tinyimagenet

from robustbench_zs.cli import main
from robustbench_zs.datasets import synthetic
from robustbench_zs.weights import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--train-dataset", "synthetic", "--arch", "zsbench-tiny", "--pretrained", "random"]
TRAIN += ["--device", "cpu", "--no-progress", "--batch-size", "32", "--epochs", "1"]
SMOKE = ["run", "--preset", "smoke", "--n", "8", "--eps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def small_split(monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "train", 64)


@pytest.fixture
def trained(tmp_path_factory) -> Path:
    """A models folder with one complete ft_standard checkpoint of the tiny model (named ``good``)."""
    root = tmp_path_factory.mktemp("trained")
    assert (
        main([*TRAIN, "--method", "ft_standard", "--out", str(root / "m"), "--data-root", str(root), "--name", "good"])
        == 0
    )
    return root / "m"


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _one_line(capsys, code: int, argv: list[str], *needles: str) -> str:
    assert main(argv) == code, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("name", ["../escaped", "/tmp/zsbench-absolute", "a/b", "..", ".", "x\x00y"])
def test_a_name_that_is_not_a_plain_folder_is_refused(tmp_path, capsys, name: str) -> None:
    argv = [*TRAIN, "--method", "ft_standard", "--out", str(tmp_path / "m"), "--data-root", str(tmp_path)]
    _one_line(capsys, 2, [*argv, "--name", name], "--name", "plain folder name")
    assert not (tmp_path / "m").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/zsbench-absolute").exists()


def _damage_weights(folder: Path, change) -> None:
    """Rewrite the checkpoint's weights with ``change`` applied, as a consistent folder (size and sha256 match)."""
    tensors, meta = load_checkpoint(folder)
    change(tensors)
    save_checkpoint(folder, tensors, meta)


def _first_float(tensors: dict) -> str:
    return next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)


WEIGHTS = {
    "integer tensor": (lambda t: t.update({_first_float(t): t[_first_float(t)].to(torch.int64)}), "int64"),
    "boolean tensor": (lambda t: t.update({_first_float(t): t[_first_float(t)] > 0}), "bool"),
    "NaN in a tensor": (lambda t: t[_first_float(t)].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    "inf in a tensor": (lambda t: t[_first_float(t)].view(-1).__setitem__(-1, float("inf")), "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_weights_of_the_wrong_kind_are_refused_with_the_tensors_name(trained, tmp_path, capsys, case: str) -> None:
    change, needle = WEIGHTS[case]
    name = _first_float(load_checkpoint(trained / "good")[0])
    _damage_weights(trained / "good", change)
    argv = [*SMOKE, "--methods", "ft_standard", "--checkpoint", f"ft_standard={trained / 'good'}"]
    argv += ["--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    _one_line(capsys, 2, argv, needle, name)
    assert not list((tmp_path / "r").rglob("*.json")) if (tmp_path / "r").exists() else True


def test_a_weights_file_outside_its_folder_is_refused(trained, tmp_path, capsys) -> None:
    meta_path = trained / "good" / "meta.json"
    meta = json.loads(meta_path.read_text())
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((trained / "good" / "weights.safetensors").read_bytes())
    meta["weights_file"] = os.path.relpath(outside, trained / "good")
    meta_path.write_text(json.dumps(meta))
    argv = [*SMOKE, "--methods", "ft_standard", "--checkpoint", f"ft_standard={trained / 'good'}"]
    argv += ["--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    _one_line(capsys, 2, argv, "points outside", "weights_file")


DAMAGED_META = {
    "meta.json truncated": lambda p: p.write_text(p.read_text()[:30]),
    "meta.json a list": lambda p: p.write_text("[1, 2]"),
    "meta.json not UTF-8": lambda p: p.write_bytes(b"\xff\xfe{\x00"),
    "meta.json empty": lambda p: p.write_text(""),
    "meta.json a folder": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_META))
def test_a_damaged_checkpoint_folder_does_not_stop_a_run_that_does_not_need_it(trained, tmp_path, capsys, case) -> None:
    bad = trained / "broken"
    (bad).mkdir()
    (bad / "meta.json").write_text((trained / "good" / "meta.json").read_text())
    DAMAGED_META[case](bad / "meta.json")
    before = _tree(trained)
    argv = [*SMOKE, "--methods", "ft_standard", "--models-dir", str(trained), "--no-train-missing"]
    argv += ["--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    err = _one_line(capsys, 0, argv, "warning", str(bad))
    assert "good" not in err
    assert _tree(trained) == before
    rec = json.loads(next((tmp_path / "r" / "records").rglob("*.json")).read_text())
    assert '"checkpoint_name": "good"' in json.dumps(rec["model"]), rec["model"]  # the run used the good folder


def test_an_annotation_line_that_leaves_the_dataset_is_refused(tmp_path, capsys) -> None:
    base = write_tinyimagenet(tmp_path / "data", n_val_per_class=1)
    secret = tmp_path / "secret.JPEG"
    secret.write_bytes(b"not for the benchmark")
    ann = base / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    first = lines[0].split("\t")
    first[0] = os.path.relpath(secret, base / "val" / "images")
    ann.write_text("\n".join(["\t".join(first), *lines[1:]]) + "\n")
    argv = [*SMOKE, "--datasets", "tinyimagenet", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    _one_line(capsys, 2, argv, "val_annotations.txt:1", "points outside")


FLAGS = {
    "checkpoint for a method not run": (["--methods", "clip", "--checkpoint", "tecoa=x"], "not among --methods"),
    "checkpoint for clip": (["--methods", "clip", "--checkpoint", "clip=x"], "clip trains nothing"),
    "checkpoint for interpolation": (
        ["--methods", "interpolation", "--checkpoint", "interpolation=x"],
        "interpolation.theta1",
    ),
    "huge batch size": (["--batch-size", "100000000000"], "--batch-size 100000000000 must be at most 65536"),
}


@pytest.mark.parametrize("case", sorted(FLAGS))
def test_a_flag_that_would_do_nothing_is_refused(tmp_path, capsys, case: str) -> None:
    extra, needle = FLAGS[case]
    _one_line(capsys, 2, [*SMOKE, *extra, "--out", str(tmp_path / "r"), "--data-root", str(tmp_path)], needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("template", ["a photo of a {}, {kind}", "a {} and a {1}", "a photo of a {} {"])
def test_a_template_with_another_placeholder_is_one_line(tmp_path, capsys, template: str) -> None:
    over = tmp_path / "prompts.json"
    over.write_text(json.dumps({"synthetic": {"templates": [template]}}))
    argv = [*SMOKE, "--prompt-overrides", str(over), "--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]
    _one_line(capsys, 2, argv, "template", "placeholder")


def test_what_we_write_follows_the_umask(tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        assert (
            main([*TRAIN, "--method", "ft_standard", "--out", str(tmp_path / "m"), "--data-root", str(tmp_path)]) == 0
        )
        assert main([*SMOKE, "--out", str(tmp_path / "r"), "--data-root", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    files = [p for p in [*(tmp_path / "m").rglob("*"), *(tmp_path / "r").rglob("*")] if p.is_file()]
    assert any(p.name == "weights.safetensors" for p in files) and any(p.name == "leaderboard.md" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("pixels", [72 * 72, 100 * 100])  # over the (lowered) limit, and over twice it
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, capsys, monkeypatch, pixels: int) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the 64x64 images pass; a bigger one stands for a bomb
    base = write_tinyimagenet(tmp_path / "data", n_val_per_class=1)
    side = int(pixels**0.5)
    for victim in (base / "val" / "images").iterdir():  # every one, so that the seeded subset meets one
        Image.new("RGB", (side, side), (200, 10, 10)).save(victim, format="PNG")
    argv = [*SMOKE, "--datasets", "tinyimagenet", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    _one_line(capsys, 2, argv, "val/images/val_", "decompression bomb")


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "folder"])
def test_a_record_that_is_not_a_regular_file_is_skipped_not_read(tmp_path, capsys, kind: str) -> None:
    out = tmp_path / "r"
    assert main([*SMOKE, "--out", str(out), "--data-root", str(tmp_path)]) == 0
    capsys.readouterr()
    odd = out / "records" / "clip" / "synthetic" / "odd.json"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    else:
        odd.symlink_to("/dev/zero")
    assert main(["leaderboard", "--out", str(out)]) == 0  # returns: a FIFO is never opened, /dev/zero never read
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"zsbench: warning: skipping invalid record {odd}: not a regular file (a FIFO, device or folder)"
    ]


def test_a_closed_stdout_is_a_quiet_exit(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "robustbench_zs", "list", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before the first line is written (as `| head -0` would leave it)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("how", ["full disk", "a folder in its place"])
def test_the_leaderboard_on_a_full_disk_or_over_a_folder_is_one_line(tmp_path, capsys, monkeypatch, how: str) -> None:
    import errno

    out = tmp_path / "r"
    assert main([*SMOKE, "--out", str(out), "--data-root", str(tmp_path)]) == 0
    capsys.readouterr()
    if how == "full disk":
        before = _tree(out)

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
        _one_line(capsys, 2, ["leaderboard", "--out", str(out)], "no space left on device while writing", "leaderboard")
        assert _tree(out) == before  # the previous leaderboard is whole, no temporary file is left
    else:
        (out / "leaderboard.md").unlink()
        (out / "leaderboard.md").mkdir()
        _one_line(capsys, 2, ["leaderboard", "--out", str(out)], "cannot write", "leaderboard.md")
