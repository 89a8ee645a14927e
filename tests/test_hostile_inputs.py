"""Hostile and broken inputs: each one answered with one clear line and exit code 2 (docs/bad_inputs.md lists them).

Every case here has a row in docs/bad_inputs.md with the same input description, so the table cannot fall behind.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from robustbench_zs.cli import main
from robustbench_zs.datasets.fixtures import WRITERS
from robustbench_zs.models import ModelSpec, load_model

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


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return [*SMOKE, "--out", str(tmp / "file" / "results")]


#: (input, setup(tmp) -> argv, a fragment of the expected line)
CASES = [
    ("unknown method", lambda t: [*SMOKE, "--methods", "nope"], "unknown method 'nope'; known methods: clip"),
    ("unknown dataset", lambda t: [*SMOKE, "--datasets", "nope"], "unknown dataset 'nope'; known datasets:"),
    ("unknown attack", lambda t: [*SMOKE, "--attack", "fgsm"], "unknown attack 'fgsm'; known attacks: pgd"),
    ("unknown profile", lambda t: [*SMOKE, "--profile", "fast"], "invalid choice: 'fast'"),
    ("unknown method option", lambda t: [*SMOKE, "--set", "clip.alpha=1"], "clip has no option 'alpha'"),
    ("eps not a number", lambda t: [*SMOKE, "--eps", "one"], "--eps 'one' is not a number"),
    ("negative eps", lambda t: [*SMOKE, "--eps", "-1"], "--eps -1 is negative"),
    ("eps over 255", lambda t: [*SMOKE, "--eps", "300"], "--eps 300 is over 255"),
    ("zero steps", lambda t: [*SMOKE, "--steps", "0"], "--steps 0 must be at least 1"),
    ("steps not an integer", lambda t: [*SMOKE, "--steps", "ten"], "--steps 'ten' is not an integer"),
    ("zero images", lambda t: [*SMOKE, "--n", "0"], "--n 0 must be at least 1"),
    ("negative batch size", lambda t: [*SMOKE, "--batch-size", "-3"], "--batch-size -3 must be at least 1"),
    ("steps with AutoAttack", lambda t: [*SMOKE, "--attack", "autoattack", "--steps", "5"], "--steps has no effect"),
    ("bf16 AutoAttack", lambda t: [*SMOKE, "--attack", "autoattack", "--attack-precision", "bf16"], "fp32 only"),
    ("missing dataset folder", _dataset_case("missing"), "CIFAR-10 not found"),
    ("partial dataset folder", _dataset_case("partial"), "lacks test_batch"),
    ("corrupt image", _dataset_case("corrupt image"), ".jpg"),
    ("malformed metadata", _dataset_case("malformed metadata"), "test1.txt:"),
    ("missing checkpoint file", _checkpoint_case("absent"), "no such file or folder"),
    ("truncated checkpoint", _checkpoint_case("truncated"), "truncated or corrupt"),
    ("wrong-architecture checkpoint", _checkpoint_case("wrong architecture"), "another architecture"),
    ("pickle-payload checkpoint", _checkpoint_case("pickle payload"), "refusing"),
    ("web page saved as a checkpoint", _checkpoint_case("html page"), "is a web page, not weights"),
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


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import robustbench_zs.results.store as store

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", no_space)
    code = main([*SMOKE, "--attack", "none", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("zsbench: error: no space left on device while writing") and "\n" not in err
    assert not list((tmp_path / "r").rglob("*.tmp")), "the temporary file is removed"


def test_a_record_edited_into_invalid_json_is_skipped_by_the_leaderboard(tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*SMOKE, "--out", str(out)]) == 0
    victim = next((out / "records").rglob("pgd-*.json"))
    victim.write_text('{"schema_version": 1, "result": ')
    capsys.readouterr()
    assert main(["leaderboard", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipping invalid record {victim}" in err
    # and a run in the same folder recomputes it rather than trusting the broken file
    assert main([*SMOKE, "--out", str(out)]) == 0
    assert json.loads(victim.read_text())["result"]["n"] == 16


def test_the_docs_table_lists_every_case():
    text = DOC.read_text(encoding="utf-8")
    rows = {m.group(1) for m in re.finditer(r"^\| ([^|]+?) \|", text, flags=re.M)}
    for name, _, _ in CASES:
        assert name in rows, f"docs/bad_inputs.md has no row for {name!r}"
    for extra in ("full output disk", "record edited into invalid JSON"):
        assert extra in rows
