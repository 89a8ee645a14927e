"""Hostile and broken inputs: each one answered with one clear line and exit code 2 (docs/bad_inputs.md lists them).

Every case here has a row in docs/bad_inputs.md with the same input description, and every row of that table is a
case here (or one of the listed extras), so the table and the tests cannot drift apart.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dataset_fixtures import WRITERS
from disks import fill, temporaries, tmpfs

from robustbench_zs.cli import main
from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.results import RecordStore, validate

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
SMOKE = ["run", "--preset", "smoke", "--n", "16"]
TINY = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


def _visual_file(tmp: Path, name: str, arch: str = "zsbench-tiny") -> Path:
    model = load_model(ModelSpec(arch, "random"), torch.device("cpu"))
    path = tmp / name
    torch.save({"vision_encoder_state_dict": model.model.visual.state_dict()}, path)
    return path


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the test checks the marker never appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint_case(kind: str):
    def setup(tmp: Path) -> list[str]:
        if kind == "truncated":
            good = _visual_file(tmp, "good.pt").read_bytes()
            path = tmp / "truncated.pt"
            path.write_bytes(good[: len(good) // 2])
        elif kind == "wrong architecture":
            path = _visual_file(tmp, "rn.pt", arch="zsbench-tiny-rn")
        elif kind == "pickle payload":
            path = tmp / "evil.pt"
            with open(path, "wb") as f:
                pickle.dump({"vision_encoder_state_dict": _Payload(str(tmp / "PAYLOAD_RAN"))}, f)
        elif kind == "html page":
            path = tmp / "page.pt"
            path.write_text("<!DOCTYPE html><html><body>Sign in to continue</body></html>")
        else:
            path = tmp / "absent.pt"
        return [*SMOKE, "--methods", "tecoa", "--attack", "none", "--checkpoint", f"tecoa={path}"]

    return setup


def _dataset_case(kind: str):
    def setup(tmp: Path) -> list[str]:
        root = tmp / "data"
        if kind == "partial":
            WRITERS["cifar10"](root)
            (root / "cifar-10-batches-py" / "test_batch").unlink()
            ds = "cifar10"
        elif kind == "corrupt image":
            WRITERS["dtd"](root)
            first = (root / "dtd" / "dtd" / "labels" / "test1.txt").read_text().split()[0]
            (root / "dtd" / "dtd" / "images" / first).write_bytes(b"\xff\xd8\xff not a jpeg")
            ds = "dtd"
        elif kind == "malformed metadata":
            WRITERS["dtd"](root)
            labels = root / "dtd" / "dtd" / "labels" / "test1.txt"
            labels.write_text(labels.read_text() + "no_such_folder_line\n")
            ds = "dtd"
        else:  # missing
            ds = "cifar10"
        return ["run", *TINY, "--methods", "clip", "--datasets", ds, "--data-root", str(root), "--attack", "none"]

    return setup


def _pretrained_payload(tmp: Path) -> list[str]:
    path = tmp / "evil-clip.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual.proj": _Payload(str(tmp / "PAYLOAD_RAN"))}, f)
    tiny = ["--arch", "zsbench-tiny", "--pretrained", str(path), "--device", "cpu", "--no-progress"]
    return ["run", *tiny, "--datasets", "synthetic", "--n", "8", "--attack", "none"]


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return [*SMOKE, "--out", str(tmp / "file" / "results")]


def _fast_tier_case(tmp: Path) -> list[str]:
    """``--tier fast`` on a CIFAR-10 whose test split (20 images) is not the one the shipped subset was drawn from."""
    WRITERS["cifar10"](tmp / "data")
    return ["run", *TINY, "--tier", "fast", "--datasets", "cifar10", "--data-root", str(tmp / "data")]


#: (input, setup(tmp) -> argv, a fragment of the expected line)
CASES = [
    ("unknown method", lambda t: [*SMOKE, "--methods", "nope"], "unknown method 'nope'; known methods: clip"),
    ("unknown dataset", lambda t: [*SMOKE, "--datasets", "nope"], "unknown dataset 'nope'; known datasets:"),
    ("unknown attack", lambda t: [*SMOKE, "--attack", "nonesuch"], "unknown attack 'nonesuch'; known attacks: pgd"),
    ("unknown profile", lambda t: [*SMOKE, "--profile", "fast"], "invalid choice: 'fast'"),
    ("unknown method option", lambda t: [*SMOKE, "--set", "clip.alpha=1"], "clip has no option 'alpha'"),
    ("eps not a number", lambda t: [*SMOKE, "--eps", "one"], "--eps 'one' is not a number"),
    ("negative eps", lambda t: [*SMOKE, "--eps", "-1"], "--eps -1 is negative"),
    ("eps over 255", lambda t: [*SMOKE, "--eps", "300"], "--eps 300 is over 255/255"),
    (
        "eps that reads as a fraction",
        lambda t: [*SMOKE, "--eps", "0.03"],
        "write --eps 8/255 (or 8) for that, or --eps 0.03/255",
    ),
    ("eps divided by zero", lambda t: [*SMOKE, "--eps", "2/0"], "--eps 2/0 divides by 0"),
    ("zero steps", lambda t: [*SMOKE, "--steps", "0"], "--steps 0 must be at least 1"),
    ("steps not an integer", lambda t: [*SMOKE, "--steps", "ten"], "--steps 'ten' is not an integer"),
    ("eps nan", lambda t: [*SMOKE, "--eps", "nan"], "--eps nan is negative or not finite"),
    ("eps inf", lambda t: [*SMOKE, "--eps", "inf"], "--eps inf is negative or not finite"),
    ("negative steps", lambda t: [*SMOKE, "--steps", "-1"], "--steps -1 must be at least 1"),
    ("zero images", lambda t: [*SMOKE, "--n", "0"], "--n 0 must be at least 1"),
    ("images not an integer", lambda t: [*SMOKE, "--n", "abc"], "--n 'abc' is not an integer"),
    ("zero batch size", lambda t: [*SMOKE, "--batch-size", "0"], "--batch-size 0 must be at least 1"),
    ("negative batch size", lambda t: [*SMOKE, "--batch-size", "-3"], "--batch-size -3 must be at least 1"),
    ("batch size not an integer", lambda t: [*SMOKE, "--batch-size", "x"], "--batch-size 'x' is not an integer"),
    ("steps with AutoAttack", lambda t: [*SMOKE, "--attack", "autoattack", "--steps", "5"], "--steps has no effect"),
    ("bf16 AutoAttack", lambda t: [*SMOKE, "--attack", "autoattack", "--attack-precision", "bf16"], "not bf16"),
    ("images chosen besides a tier", lambda t: [*SMOKE, "--tier", "fast"], "--n chooses other images"),
    (
        "another attack than the tier's",
        lambda t: ["run", *TINY, "--tier", "gold", "--attack", "pgd"],
        "--tier gold runs --attack autoattack; --attack pgd contradicts it",
    ),
    (
        "fast tier on a dataset without a subset",
        lambda t: ["run", *TINY, "--tier", "fast", "--datasets", "synthetic"],
        "no shipped fast-tier subset for synthetic",
    ),
    ("fast tier on a split of another size", _fast_tier_case, "drawn from 10,000 images, this split has 20"),
    ("missing dataset folder", _dataset_case("missing"), "CIFAR-10 not found"),
    ("partial dataset folder", _dataset_case("partial"), "lacks test_batch"),
    ("corrupt image", _dataset_case("corrupt image"), ".jpg"),
    ("malformed metadata", _dataset_case("malformed metadata"), "test1.txt:"),
    ("missing checkpoint file", _checkpoint_case("absent"), "no such file or folder"),
    ("truncated checkpoint", _checkpoint_case("truncated"), "truncated or corrupt"),
    ("wrong-architecture checkpoint", _checkpoint_case("wrong architecture"), "another architecture"),
    ("pickle-payload checkpoint", _checkpoint_case("pickle payload"), "refusing"),
    ("web page saved as a checkpoint", _checkpoint_case("html page"), "is a web page, not weights"),
    ("pickle-payload --pretrained file", _pretrained_payload, "refusing"),
    ("output folder under a file", _out_is_a_file, "cannot write to output directory"),
    ("--device cuda without a GPU", lambda t: [*SMOKE, "--device", "cuda"], "no CUDA GPU is visible"),
    ("leaderboard of an empty folder", lambda t: ["leaderboard", "--out", str(t / "none")], "no records under"),
]


@pytest.mark.parametrize("name, setup, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, monkeypatch, name, setup, expected):
    monkeypatch.chdir(tmp_path)
    if torch.cuda.is_available() and "cuda" in name:
        pytest.skip("a GPU is visible")
    argv = setup(tmp_path)
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "results")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit (with code 2) instead of returning
        code = e.code
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "PAYLOAD_RAN").exists(), "the checkpoint's payload ran"


# --- disks that cannot take a write ----------------------------------------------------------------------------


#: (input, which folder is on the small disk, full or read-only, a fragment of the expected line)
DISK_CASES = [
    ("full output disk", "out", "full", "no space left on device while writing"),
    ("read-only output disk", "out", "ro", "Read-only file system; pass --out DIR with a writable folder"),
    ("full cache disk", "cache", "full", "no space left on device while writing"),
    ("read-only cache disk", "cache", "ro", "read-only file system while writing"),
]
RUN_ON_DISK = ["run", *TINY, "--datasets", "synthetic", "--n", "32"]


@pytest.mark.parametrize("name, where, how, expected", DISK_CASES, ids=[c[0] for c in DISK_CASES])
def test_a_real_full_or_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch, name, where, how, expected):
    with tmpfs(tmp_path / "disk", *(["ro"] if how == "ro" else [])) as disk:
        if how == "full":
            fill(disk)
        out = disk / "results" if where == "out" else tmp_path / "results"
        if where == "cache":
            monkeypatch.setenv("ZSBENCH_CACHE", str(disk))
        code = main([*RUN_ON_DISK, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "Traceback" not in err, err
        assert err.startswith("zsbench: error: ") and expected in err, err
        fix = "ZSBENCH_CACHE" if where == "cache" else "--out"
        assert fix in err, err
        assert not temporaries(disk), "a temporary file was left behind"


def test_a_tensor_cache_on_a_full_disk_is_one_line_not_a_crash(tmp_path):
    """The decoded-image cache fills a sparse file: written through a memory map, a full disk would kill the process
    with SIGBUS; it must end with one line instead (run in a subprocess, so a crash cannot take pytest with it)."""
    with tmpfs(tmp_path / "disk") as disk:  # 64 kB: the text head fits, the 32 decoded images (96 kB) do not
        env = {**os.environ, "ZSBENCH_CACHE": str(disk), "OMP_NUM_THREADS": "1"}
        argv = [*RUN_ON_DISK, "--attack", "none", "--out", str(tmp_path / "results")]
        done = subprocess.run(
            [sys.executable, "-m", "robustbench_zs", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        err = done.stderr.strip()
        assert done.returncode == 2, (done.returncode, err)
        assert "\n" not in err and "no space left on device while writing" in err and "images.u8" in err, err
        assert "--no-tensor-cache" in err
        assert not temporaries(disk)


def test_a_changed_fast_tier_index_file_is_one_line(tmp_path, capsys, monkeypatch):
    from robustbench_zs.datasets import tiers

    copy_dir = tmp_path / "fast_subsets"
    shutil.copytree(Path(tiers.__file__).parent / tiers.FOLDER, copy_dir)
    victim = copy_dir / "cifar10.json"
    victim.write_bytes(victim.read_bytes().replace(b'"n_total": 10000', b'"n_total": 10001'))
    monkeypatch.setattr(tiers, "_data_bytes", lambda name: (copy_dir / name).read_bytes())
    tiers.read_document.cache_clear()
    argv = ["run", *TINY, "--tier", "fast", "--datasets", "cifar10", "--data-root", str(tmp_path / "data")]
    WRITERS["cifar10"](tmp_path / "data")
    try:
        code = main([*argv, "--out", str(tmp_path / "out")])
    finally:
        tiers.read_document.cache_clear()
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "fast_subsets/cifar10.json has sha256" in err and "the manifest says" in err, err


def test_a_full_disk_while_writing_a_record_is_one_line(tmp_path, capsys, monkeypatch):
    """The record's own write (JSON to a temporary file, fsync, rename) fails: the package's fsync of a file written
    whole is patched, and without the tensor cache (its metadata is written the same way) the record is the first."""
    import robustbench_zs.atomic as atomic

    def no_space(fd) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_fsync", no_space)
    out = tmp_path / "r"
    code = main([*SMOKE, "--attack", "none", "--no-tensor-cache", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("zsbench: error: no space left on device while writing") and "\n" not in err
    assert ".json; free space or choose another --out" in err
    assert not temporaries(out), "the temporary file is removed"
    assert not list((out / "records").rglob("clean-*.json")), "no record was written"


# --- hand-edited records ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder with a clean and a PGD record (made once for the module)."""
    tmp = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSBENCH_CACHE", str(tmp / "cache"))
        assert main([*SMOKE, "--eps", "1", "--steps", "2", "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def _edit(change):
    def apply(path: Path) -> None:
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))

    return apply


def _plus_one(res: dict) -> float:
    return (res["correct"] + 1) / res["n"]


def _replace(text: str):
    return lambda path: path.write_text(text)


#: (input, what is done to the PGD record file, a fragment of the warning)
RECORD_CASES = [
    ("record edited into invalid JSON", _replace('{"schema_version": 1, "result": '), "Expecting value"),
    ("record with a text accuracy", _edit(lambda r: r["result"].update(accuracy="high")), "'result.accuracy'"),
    ("record with a NaN accuracy", _edit(lambda r: r["result"].update(accuracy=float("nan"))), "'result.accuracy'"),
    ("record with a numeric dataset id", _edit(lambda r: r["dataset"].update(id=3)), "'dataset.id'"),
    ("record with a text confidence interval", _edit(lambda r: r["result"].update(ci95="0-1")), "'result.ci95'"),
    (
        "record with a damaged per-example payload",
        _edit(lambda r: r["result"]["per_example"].update(data=[1, 0])),
        "'result.per_example.data'",
    ),
    ("record with profile knobs not an object", _edit(lambda r: r.update(profile="clip")), "'profile'"),
    ("record missing a field", _edit(lambda r: r["dataset"].pop("indices_sha256")), "'dataset.indices_sha256'"),
    (
        "record whose per-example bits contradict its count",
        _edit(lambda r: r["result"].update(correct=r["result"]["correct"] + 1, accuracy=_plus_one(r["result"]))),
        "where result.correct says",
    ),
    (
        "record whose n contradicts its subset",
        _edit(lambda r: r["dataset"].update(n=r["dataset"]["n"] + 1)),
        "'dataset.n'",
    ),
    ("record with an interval not of its counts", _edit(lambda r: r["result"].update(ci95=[0.0, 1.0])), "Wilson"),
    ("record that is a JSON list", _replace("[1, 2, 3]"), "not a JSON object but a list"),
    ("empty record file", _replace(""), "Expecting value"),
    ("record nested too deeply", _replace("[" * 100_000), "nested too deeply"),
]


@pytest.mark.parametrize("name, damage, expected", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_a_hand_edited_record_is_skipped_by_the_leaderboard(results, tmp_path, capsys, name, damage, expected):
    out = tmp_path / "r"
    shutil.copytree(results, out)
    victim = next((out / "records").rglob("pgd-*.json"))
    damage(victim)
    with pytest.raises(ValueError, match=re.escape(expected)):  # json's own errors are ValueErrors too
        RecordStore.read_path(victim)
    capsys.readouterr()
    assert main(["leaderboard", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith(f"zsbench: warning: skipping invalid record {victim}: ") and expected in line, err
    rows = (out / "records.csv").read_text().strip().splitlines()
    assert len(rows) == 2, "the clean record is still on the leaderboard"


def test_a_run_recomputes_a_record_edited_into_invalid_json(results, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(results, out)
    victim = next((out / "records").rglob("pgd-*.json"))
    good = json.loads(victim.read_text())["result"]
    victim.write_text('{"schema_version": 1, "result": ')
    assert main([*SMOKE, "--eps", "1", "--steps", "2", "--out", str(out)]) == 0
    assert json.loads(victim.read_text())["result"] == good


def test_a_validated_record_round_trips_and_every_reader_field_is_typed(results):
    record = json.loads(next((results / "records").rglob("pgd-*.json")).read_text())
    assert validate(copy.deepcopy(record)) == record
    for field in ("result.n", "dataset.n_total", "attack.eps_255", "seed"):
        broken = copy.deepcopy(record)
        *parents, last = field.split(".")
        node = broken
        for part in parents:
            node = node[part]
        node[last] = "1"
        with pytest.raises(ValueError, match=re.escape(f"'{field}'")):
            validate(broken)


# --- the table in docs/bad_inputs.md -------------------------------------------------------------------------------

#: rows of the table tested elsewhere: (row, the test)
EXTRAS = {"full disk while writing a record": "test_a_full_disk_while_writing_a_record_is_one_line"}
EXTRAS["tensor cache on a full disk"] = "test_a_tensor_cache_on_a_full_disk_is_one_line_not_a_crash"
EXTRAS["changed fast-tier index file"] = "test_a_changed_fast_tier_index_file_is_one_line"


def test_the_docs_table_and_the_cases_match_both_ways():
    text = DOC.read_text(encoding="utf-8").split("\n## Training", 1)[0]  # that section: test_hostile_training.py
    rows = [m.group(1) for m in re.finditer(r"^\| ([^|]+?) \|", text, flags=re.M)]
    rows = [r for r in rows if r not in ("input", "---")]
    tested = [c[0] for c in CASES] + [c[0] for c in DISK_CASES] + [c[0] for c in RECORD_CASES] + list(EXTRAS)
    assert len(tested) == len(set(tested)), "two cases share a name"
    assert len(rows) == len(set(rows)), "two rows of docs/bad_inputs.md share a name"
    assert sorted(set(tested) - set(rows)) == [], "cases without a row in docs/bad_inputs.md"
    assert sorted(set(rows) - set(tested)) == [], "rows of docs/bad_inputs.md that no test tries"
    for test in EXTRAS.values():
        assert callable(globals()[test])


@pytest.mark.parametrize("device", ["gpu", "cuda:abc", "CPU", "", "cuda:-1"])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_device_that_is_no_device_is_one_line(tmp_path, capsys, command, device):
    """run and train read --device through one resolver (robustbench_zs.distributed.resolve_device)."""
    if command == "run":
        argv = ["run", "--preset", "smoke", "--n", "4", "--out", str(tmp_path / "out")]
    else:
        argv = ["train", "--method", "ft_standard", "--arch", "zsbench-tiny", "--pretrained", "random"]
        argv += ["--train-dataset", "synthetic", "--models-dir", str(tmp_path / "models")]
    assert main([*argv, "--data-root", str(tmp_path / "data"), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "device" in err, err
