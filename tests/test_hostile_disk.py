"""The filesystem as an adversary: disks that fill up at every write of a training, of a run that trains on the way,
of the leaderboard and of the figures; folders where a file is to be written; names and text files that are not
UTF-8. Each failure is one line on stderr with exit code 2 that names the file and the flag to change, nothing that
was on disk before changes, no temporary file stays behind, and a training stopped by a full disk ends, once space is
freed, with the same weights bit for bit as one that never stopped.

The full disks are real (a small tmpfs, see ``disks.py``): every writer meets ENOSPC where the kernel raises it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_fixtures import WRITERS, write_tinyimagenet
from disks import fill, temporaries, tmpfs

from robustbench_zs.cli import main
from robustbench_zs.datasets import synthetic
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.report.figures import fig4
from robustbench_zs.report.leaderboard import records_frame

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
TRAIN = ["train", "--train-dataset", "synthetic", *TINY, "--batch-size", "16", "--epochs", "1"]
TRAIN += ["--method", "ft_standard"]
SMOKE = ["run", "--preset", "smoke", "--n", "8", "--eps", "1,4", "--no-progress"]


@pytest.fixture(autouse=True)
def small_split(monkeypatch, tmp_path):
    monkeypatch.setitem(synthetic.SIZES, "train", 64)  # 4 steps of 16
    monkeypatch.setenv("ZSBENCH_CACHE", str(tmp_path / "cache"))  # the caches stay off the small disks


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "filler"
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --- a training whose disk fills up at each of its writes ---------------------------------------------------------


def test_a_training_on_a_disk_that_fills_at_every_write_resumes_to_the_same_weights(tmp_path, capsys) -> None:
    """The free space is set, page by page where it matters, so that the disk fills during each write of a training
    in turn: the resume state, the final weights, meta.json. Each time: one line naming the file under --out and
    the flag, the checkpoint already on that disk unchanged, no temporary left, a resume state that is whole when
    there is one; and once the filler is deleted, the same command ends with the weights of an uninterrupted
    training, bit for bit."""
    data = ["--data-root", str(tmp_path / "data")]
    reference = tmp_path / "reference"
    assert main([*TRAIN, *data, "--out", str(reference), "--name", "run"]) == 0
    want = _sha(reference / "run" / "weights.safetensors")
    capsys.readouterr()

    failed_in: set[str] = set()

    def attempt(disk: Path, free_kb: int) -> bool:
        """Train with ``free_kb`` left on ``disk``; True when the disk was too full."""
        out = disk / "m"
        filler = fill(disk, free_kb)
        before = _tree(out / "kept")
        code = main([*TRAIN, *data, "--models-dir", str(out), "--name", "run"])
        err = capsys.readouterr().err.strip()
        assert _tree(out / "kept") == before, "a checkpoint that was already there changed"
        assert not temporaries(disk), temporaries(disk)
        if code == 0:
            assert _sha(out / "run" / "weights.safetensors") == want
            return False
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "no space left on device while writing " + str(out / "run") in err
        assert "choose another --models-dir" in err
        failed_in.add(err.split(" while writing ")[1].split(";")[0].removeprefix(str(out / "run")).strip("/"))
        resume = out / "run" / "resume"
        if (resume / "CURRENT").exists():  # what a resume finds is one whole state
            current = resume / (resume / "CURRENT").read_text().strip()
            assert {p.name for p in current.iterdir()} == {"state.json", "weights.safetensors", "optimizer.safetensors"}
        filler.unlink()
        assert main([*TRAIN, *data, "--out", str(out), "--name", "run"]) == 0, capsys.readouterr().err
        assert _sha(out / "run" / "weights.safetensors") == want, f"resumed at {free_kb} kB free: other weights"
        capsys.readouterr()
        return True

    with tmpfs(tmp_path / "disk", size_kb=4096) as disk:
        assert main([*TRAIN, *data, "--out", str(disk / "m"), "--name", "kept"]) == 0
        capsys.readouterr()
        levels, free = [], 0
        while True:  # coarse: the first success bounds the space a whole training needs
            levels.append(free)
            if not attempt(disk, free):
                break
            free += 256
            shutil.rmtree(disk / "m" / "run")
        low, high = levels[-2], levels[-1]
        while high - low > 4:  # to the page: the last write that fails is the last write of the training
            mid = (low + high) // 2
            shutil.rmtree(disk / "m" / "run")
            low, high = (mid, high) if attempt(disk, mid) else (low, mid)
    assert {"resume", "weights.safetensors", "meta.json"} <= failed_in, failed_in


def test_a_run_that_trains_on_a_full_disk_names_models_dir(tmp_path, capsys) -> None:
    """``zsbench run`` trains a missing checkpoint into --models-dir: a full disk there is one line that names that
    flag (not train's --out), and the results folder is left as it was."""
    results = tmp_path / "results"
    data = ["--data-root", str(tmp_path / "data")]
    assert main([*SMOKE, "--out", str(results), *data]) == 0
    capsys.readouterr()
    before = _tree(results)
    with tmpfs(tmp_path / "disk", size_kb=1024) as disk:
        fill(disk)
        argv = ["run", *TINY, "--methods", "ft_standard", "--train-dataset", "synthetic", "--datasets", "synthetic"]
        argv += ["--set", "ft_standard.batch_size=16", "--set", "ft_standard.epochs=1"]
        argv += ["--n", "8", "--eps", "1", "--models-dir", str(disk / "m"), "--out", str(results), *data]
        _fails(capsys, argv, "no space left on device while writing " + str(disk / "m"), "choose another --models-dir")
        assert not temporaries(disk)
    assert _tree(results) == before


# --- the leaderboard and the figures ------------------------------------------------------------------------------


def test_the_leaderboard_on_a_real_full_disk_keeps_the_previous_one(tmp_path, capsys) -> None:
    with tmpfs(tmp_path / "disk", size_kb=1024) as disk:
        out = disk / "r"
        assert main([*SMOKE, "--out", str(out), "--data-root", str(tmp_path / "data")]) == 0
        capsys.readouterr()
        (out / "leaderboard.md").write_text((out / "leaderboard.md").read_text() + "\nthe previous leaderboard\n")
        before = _tree(out)
        fill(disk)
        _fails(capsys, ["leaderboard", "--out", str(out)], "no space left on device while writing", "--out")
        assert _tree(out) == before and not temporaries(disk)


@pytest.mark.parametrize("how", ["full disk", "a folder where the png goes", "a folder where the csv goes"])
def test_a_figure_that_cannot_be_written_is_one_line_and_keeps_the_previous_one(tmp_path, capsys, how: str) -> None:
    results = tmp_path / "results"
    assert main([*SMOKE, "--out", str(results), "--data-root", str(tmp_path / "data")]) == 0
    df = records_frame(results)
    with tmpfs(tmp_path / "disk", size_kb=1024) as disk:
        paths = fig4(df, disk / "fig")
        assert paths["png"].read_bytes()[:4] == b"\x89PNG"
        if how == "full disk":
            fill(disk)
        else:
            target = paths["png" if "png" in how else "csv"]
            target.unlink()
            target.mkdir()
            (target / "inside").write_text("a user's file")
        before = _tree(disk / "fig")
        with pytest.raises(ZSBenchError) as err:
            fig4(df, disk / "fig")
        line = str(err.value)
        assert "\n" not in line and str(disk / "fig") in line and "--out" in line, line
        assert ("no space left on device" if how == "full disk" else "Is a directory") in line, line
        assert _tree(disk / "fig") == before and not temporaries(disk)


# --- folders where a file is written ------------------------------------------------------------------------------


def test_a_folder_in_place_of_a_record_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    argv = [*SMOKE[:-3], "--no-progress", "--out", str(out), "--data-root", str(tmp_path / "data"), "--attack", "none"]
    assert main(argv) == 0
    capsys.readouterr()
    (record,) = (out / "records").rglob("clean-*.json")
    record.unlink()
    record.mkdir()
    (record / "keep").write_text("a user's file")
    before = _tree(out)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # the run goes on with its other work and rebuilds the leaderboard, which skips the folder with a warning
    assert lines[:-1] == [
        f"zsbench: warning: skipping invalid record {record}: not a regular file (a FIFO, device or folder)"
    ]
    want = f"zsbench: error: cannot write {record}: a folder or other non-file is in its place; move it away or "
    assert lines[-1] == want + "choose another --out", lines
    assert _tree(out / "records") == {k.removeprefix("records/"): v for k, v in before.items() if "records/" in k}
    assert not temporaries(out)


@pytest.mark.parametrize("name", ["weights.safetensors", "meta.json"])
def test_a_folder_in_place_of_a_checkpoint_file_is_one_line(tmp_path, capsys, name: str) -> None:
    out = tmp_path / "m"
    (out / "run" / name).mkdir(parents=True)
    (out / "run" / name / "keep").write_text("a user's file")
    before = _tree(out)
    err = _fails(capsys, [*TRAIN, "--data-root", str(tmp_path / "data"), "--models-dir", str(out), "--name", "run"])
    if name == "meta.json":  # read first, to check that the folder holds this training: damaged, start over
        assert f"cannot read {out / 'run' / name}" in err and "rerun with --fresh" in err, err
    else:
        assert str(out / "run" / name) in err and "choose another --models-dir" in err, err
    after = {k: v for k, v in _tree(out).items() if "/resume/" not in k}  # the finished state waits to be saved
    assert after == before and not temporaries(out)


def test_a_file_in_place_of_the_results_folder_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    out.write_text("not a folder")
    _fails(capsys, [*SMOKE, "--out", str(out), "--data-root", str(tmp_path / "data")], str(out))
    assert out.read_text() == "not a folder"


# --- names and text that are not UTF-8 ----------------------------------------------------------------------------

RAW = b"caf\xe9-\xff"  # Latin-1 and a byte that is no text at all: not UTF-8


def _run_bytes(argv: list[bytes], env: dict | None = None) -> subprocess.CompletedProcess:
    """A real process, as a shell passes bytes: argparse sees the undecodable bytes as surrogates."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([os.fsencode(sys.executable), b"-m", b"robustbench_zs", *argv], capture_output=True, env=env)


def _b(args: list[str]) -> list[bytes]:
    return [a.encode() for a in args]


PLAIN = [*SMOKE[:-3], "--no-progress"]  # no --eps: these runs never get as far as an attack

#: (the flag, a command line in which that flag's value is RAW)
NOT_UTF8 = [
    ("--out", _b(PLAIN) + [b"--out", b"r-" + RAW]),
    ("--data-root", _b(PLAIN) + [b"--data-root", RAW]),
    ("--name", _b(TRAIN) + [b"--name", RAW]),
    ("--checkpoint", _b([*PLAIN, "--methods", "ft_standard"]) + [b"--checkpoint", b"ft_standard=" + RAW]),
    ("--models-dir", _b([*PLAIN, "--methods", "ft_standard"]) + [b"--models-dir", RAW]),
    ("--set", _b([*PLAIN, "--methods", "pmg_aft"]) + [b"--set", b"pmg_aft.kl_direction=" + RAW]),
]


def test_a_flag_that_is_not_utf8_from_a_real_shell_is_refused(tmp_path, monkeypatch) -> None:
    """Bytes from the command line, as a shell passes them (Python turns the undecodable ones into surrogates)."""
    monkeypatch.chdir(tmp_path)
    done = _run_bytes(NOT_UTF8[0][1])
    err = done.stderr.decode(errors="replace").strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("zsbench: error: --out: ") and "not valid UTF-8" in err and r"\xe9" in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, argv", NOT_UTF8, ids=[f for f, _ in NOT_UTF8])
def test_a_flag_that_is_not_utf8_is_refused_before_anything_runs(tmp_path, capsys, flag, argv) -> None:
    args = [os.fsdecode(a) for a in argv]  # what argparse receives from sys.argv
    if flag != "--out":
        args += ["--out", str(tmp_path / "r")]
    err = _fails(capsys, args, f"zsbench: error: {flag}: ", "not valid UTF-8", r"\xe9")
    assert err.startswith(f"zsbench: error: {flag}: "), err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variable", ["ZSBENCH_RESULTS", "ZSBENCH_DATA", "ZSBENCH_MODELS", "ZSBENCH_CACHE"])
def test_a_path_variable_that_is_not_utf8_is_refused(tmp_path, capsys, monkeypatch, variable: str) -> None:
    monkeypatch.setenv(variable, os.fsdecode(os.fsencode(tmp_path) + b"/" + RAW))
    _fails(capsys, ["leaderboard"], f"zsbench: error: ${variable}: ", "is not valid UTF-8")
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_folder_whose_name_is_not_utf8_is_skipped_with_a_warning(tmp_path, capsys) -> None:
    models = tmp_path / "m"
    assert main([*TRAIN, "--data-root", str(tmp_path / "data"), "--out", str(models), "--name", "good"]) == 0
    os.rename(os.fsencode(models / "good"), os.fsencode(models) + b"/" + RAW)
    capsys.readouterr()
    argv = [*SMOKE, "--methods", "ft_standard", "--no-train-missing", "--models-dir", str(models)]
    code = main([*argv, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert r"skipping b'" in err and r"\xe9" in err and "not valid UTF-8" in err and "rename the folder" in err, err
    assert err.strip().splitlines()[-1].startswith("zsbench: error: no ft_standard checkpoint"), err


def test_images_whose_names_are_not_utf8_are_trained_on(tmp_path, capsys) -> None:
    """Image file names are the data's, never written into a record or a checkpoint: read like any other."""
    data = tmp_path / "data"
    write_tinyimagenet(data, n_train_per_class=1)
    img = sorted((data / "tiny-imagenet-200" / "train").rglob("*.JPEG"))[0]
    os.rename(os.fsencode(img), os.fsencode(img.parent) + b"/" + RAW + b".JPEG")
    argv = ["train", "--train-dataset", "tinyimagenet", *TINY, "--batch-size", "32", "--epochs", "1"]
    assert main([*argv, "--method", "ft_standard", "--data-root", str(data), "--out", str(tmp_path / "m")]) == 0
    assert "Traceback" not in capsys.readouterr().err


#: (dataset, the text file made Latin-1 (a glob under the dataset's folder))
LATIN1 = [
    ("tinyimagenet", "val/val_annotations.txt"),
    ("tinyimagenet", "wnids.txt"),
    ("dtd", "labels/test1.txt"),
    ("food101", "meta/test.json"),
    ("sun397", "ClassName.txt"),
    ("oxfordpets", "annotations/test.txt"),
    ("fgvc_aircraft", "variants.txt"),
    ("stl10", "class_names.txt"),
]


@pytest.mark.parametrize("dataset, name", LATIN1, ids=[f"{d}:{n}" for d, n in LATIN1])
def test_a_dataset_text_file_that_is_not_utf8_is_one_line(tmp_path, capsys, dataset: str, name: str) -> None:
    data = tmp_path / "data"
    WRITERS[dataset](data)
    (path,) = [p for p in data.rglob("*") if p.is_file() and p.as_posix().endswith("/" + name)]
    path.write_bytes(path.read_bytes() + b"\n" + RAW + b"\n")
    before = _tree(data)
    assert main(["datasets", "check", "--data-root", str(data)]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(dataset + " ")]
    assert len(row) == 1 and " broken " in row[0], row
    assert f"corrupt metadata file {path}: not UTF-8 text (byte 0x" in row[0] and "re-download it" in row[0], row
    if dataset == "tinyimagenet" and name.startswith("val"):  # and a run that needs it: exit 2, one line
        argv = ["run", *TINY, "--datasets", dataset, "--n", "4", "--attack", "none", "--data-root", str(data)]
        _fails(capsys, [*argv, "--out", str(tmp_path / "r")], f"corrupt metadata file {path}: not UTF-8 text")
    assert _tree(data) == before


def test_nothing_is_cached_in_the_working_folder(tmp_path, monkeypatch) -> None:
    """A training or run started from Python without a cache folder caches its decoded images in the user's cache
    ($ZSBENCH_CACHE, else ~/.cache/robustbench_zs), never in whatever folder the process happens to run in."""
    from robustbench_zs.engine.runner import RunConfig, run
    from robustbench_zs.models import ModelSpec
    from robustbench_zs.train import TrainConfig, train

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = ModelSpec("zsbench-tiny", "random")
    train(
        TrainConfig(
            method="ft_standard",
            model=model,
            train_dataset="synthetic",
            data_root=tmp_path / "data",
            out_dir=tmp_path / "m",
            recipe={"batch_size": 16, "epochs": 1},
            device="cpu",
            progress=False,
        ),
        echo=lambda s: None,
    )
    run(
        RunConfig(
            methods=("clip",),
            datasets=("synthetic",),
            threats=(),
            model=model,
            data_root=tmp_path / "data",
            out_dir=tmp_path / "r",
            n=8,
            device="cpu",
            progress=False,
        ),
        echo=lambda s: None,
    )
    assert not list(cwd.iterdir())
    assert list((tmp_path / "cache" / "tensors").iterdir())  # $ZSBENCH_CACHE, set for every test
